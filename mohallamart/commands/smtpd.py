"""`mohallamart smtpd`: the local SMTP server that stores mail in a Maildir."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _cmd_smtpd(args: argparse.Namespace) -> int:
    from mohallamart.stack import smtpd

    smtpd.main(["--host", args.host, "--port", str(args.port), "--maildir", str(args.maildir)])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    smtpd = sub.add_parser("smtpd", help="run the local SMTP server that stores mail in a Maildir")
    smtpd.add_argument("--host", default="127.0.0.1")
    smtpd.add_argument("--port", type=int, default=1025)
    smtpd.add_argument("--maildir", required=True)
    smtpd.set_defaults(func=_cmd_smtpd)
