"""Fieldlink HQ: the HTTPS API and console, the SSH gateway agents dial into,
storage, access control and the ITSM side."""

from shared import knownwarnings

knownwarnings.install()
