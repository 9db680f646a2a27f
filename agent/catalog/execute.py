"""`exec`: a plain command, only where the site's policy allows it.

`argv` runs as given, without a shell. `command` is a shell string and runs
as `/bin/sh -c COMMAND`, which the policy must allow separately
(`allow_shell`). Without `allow_shell` an `argv` runs only if its program is
on the policy's allow-list (agent.allowlist), and then as the real file the
allow-list checked (if it is still that file), named as its entry was found;
never a shell or script interpreter the policy does not name
(agent.interpreters). Where the policy requires consent, the run service lets
exec run only inside a consented session (agent.sessions). Either runs as the
policy's `shell_user` (switching needs an agent running as root), in that
user's home directory, with the agent's small fixed environment, bounded by
the run's timeout and output cap like everything else.
"""

from __future__ import annotations

import os
import pwd
from typing import Annotated, Self

from pydantic import Field, model_validator

from agent.catalog.base import Context, Entry, Outcome, Params, Problem, Refused, which
from agent.policy import current_user
from agent.runner import SAFE_PATH, describe_exit

Word = Annotated[str, Field(max_length=8192)]


class ExecParams(Params):
    argv: list[Word] | None = Field(
        default=None, min_length=1, max_length=256, description="program and arguments, no shell"
    )
    command: str | None = Field(
        default=None,
        min_length=1,
        max_length=16384,
        description="a shell command line (needs allow_shell)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.argv is None) == (self.command is None):
            raise ValueError("give exactly one of argv or command")
        words = self.argv if self.argv is not None else [self.command or ""]
        if any("\x00" in w for w in words):
            raise ValueError("a NUL byte cannot be part of a command")
        if self.argv is not None and not self.argv[0]:
            raise ValueError("argv[0] must name a program")
        return self


def _home(user: str) -> str:
    try:
        home = pwd.getpwnam(user).pw_dir or "/"
    except KeyError:
        raise Refused(f"the policy's shell_user {user} is not a user on this machine") from None
    return home if os.path.isdir(home) else "/"


def wants_shell(params: ExecParams) -> bool:
    return params.command is not None


def argv_of(params: ExecParams) -> list[str] | None:
    return params.argv


async def run_exec(ctx: Context, params: ExecParams) -> Outcome:
    user = ctx.policy.shell_user
    me = current_user()
    run_as: str | None = None
    if user != me:
        if os.geteuid() != 0:
            raise Refused(
                f"the policy's shell_user is {user}, but the agent runs as {me} and cannot "
                "switch users"
            )
        run_as = user
    home = await ctx.thread(_home, user)
    argv = ["/bin/sh", "-c", params.command] if params.command is not None else params.argv
    assert argv is not None
    executable = None
    if ctx.program is not None and params.argv is not None:
        changed = await ctx.thread(ctx.program.still_same)
        if changed is not None:
            raise Refused(changed)
        # the file the allow-list checked, named as its entry was listed
        executable, argv = ctx.program.ident.real, [ctx.program.name, *argv[1:]]
    elif which(argv[0]) is None:
        raise Problem(f"{argv[0]}: command not found (looked up on {SAFE_PATH})")
    try:
        res = await ctx.exec(argv, user=run_as, home=home, cwd=home, executable=executable)
    except OSError as exc:
        raise Problem(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    data = {"user": user, "shell": params.command is not None}
    if res.truncated:
        return Outcome(
            data=data,
            status="failed",
            reason=f"the output passed this run's cap of {ctx.output_cap} bytes, so the "
            "command was stopped",
            exit_code=res.exit_code,
        )
    if res.exit_code != 0:
        return Outcome(
            data=data,
            status="failed",
            reason=f"the command {describe_exit(res.exit_code)}",
            exit_code=res.exit_code,
        )
    return Outcome(data=data, exit_code=0)


ENTRIES = [
    Entry(
        "exec",
        "A plain command: an argv without a shell, or a shell string where policy allows",
        ExecParams,
        "exec",
        timeout=24 * 3600,  # the policy's max_runtime_seconds and the request bound it
        output_cap=64 * 1024 * 1024,  # the policy's max_output_bytes bounds it
        run=run_exec,
        wants_shell=wants_shell,
        argv=argv_of,
    ),
]
