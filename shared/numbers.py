"""Numbers as the models that store them take them.

JSON has no infinity, but `1e400` parses as one (and `-1e400` as its
negative); pydantic takes those, and NaN, as floats by default. Stored, an
infinite threshold fires for every agent and reads back as `null`, and
PostgreSQL's JSON refuses them. Every float a request (or a setting) gives
is a `FiniteFloat`: a non-finite value is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
