"""`mohallamart stack up|down|status|start|stop`: the local stack of real services."""

from __future__ import annotations

import argparse
import json
import os

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _profile_options(args: argparse.Namespace) -> None:
    """`--brokers 3` and `--security sasl_ssl`: STACK_KAFKA_BROKERS and STACK_KAFKA_SECURITY for
    this command (set in the environment, so they win over .env as the variables would)."""
    from core.settings import get_settings

    if getattr(args, "brokers", None) is not None:
        os.environ["STACK_KAFKA_BROKERS"] = str(args.brokers)
    if getattr(args, "security", None) is not None:
        os.environ["STACK_KAFKA_SECURITY"] = args.security
    get_settings.cache_clear()


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    _profile_options(args)
    settings = load_settings()
    stack = Stack(settings, echo=out)
    result = stack.up(args.services)
    out(
        f"stack up in {result.seconds:.1f} s: started {', '.join(result.started) or 'nothing'}; "
        f"reused {', '.join(result.reused) or 'nothing'}"
        + (f"; external {', '.join(result.external)}" if result.external else "")
    )
    if settings.stack_kafka_brokers == 3 and settings.kafka_bootstrap_servers is None:
        security = settings.kafka_security
        out(
            f"kafka: 3 controllers, 3 brokers ({settings.stack_kafka_security}); clients: "
            f"KAFKA_BOOTSTRAP {settings.kafka_bootstrap}"
            + (
                f", SASL user {security.username}, its password in "
                f"{settings.stack_kafka_secrets_dir / 'client-password'}, CA {security.ca_location}"
                if security.sasl
                else ""
            )
        )
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stopped = Stack(load_settings(), echo=out).down(args.services)
    out(f"stopped {', '.join(stopped) if stopped else 'nothing (no service of this stack ran)'}")
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stack = Stack(load_settings())
    statuses = stack.status()
    if args.json:
        out(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        width = max(12, *(len(s.name) for s in statuses))
        out(f"{'service':<{width}} {'state':<10} {'pid':>8}  address")
        for s in statuses:
            state = (
                "external"
                if not s.managed
                else ("healthy" if s.healthy else ("unhealthy" if s.pid else "stopped"))
            )
            out(f"{s.name:<{width}} {state:<10} {s.pid or '-':>8}  {s.address}")
        recorded = stack.recorded_profile
        if stack.profile_mismatch and recorded is not None:
            out(
                f"note: this STACK_DIR runs Kafka with {recorded.describe()}, the settings ask "
                f"for {stack.kafka_profile.describe()}: `stack up` and `stack start` refuse "
                f"Kafka until they agree (--brokers {recorded.brokers} --security "
                f"{recorded.security})"
            )
    managed = [s for s in statuses if s.managed]
    return 0 if all(s.healthy for s in managed) else 3


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        help="Kafka's profile: 1 node, or 3 controllers + 3 brokers (STACK_KAFKA_BROKERS)",
    )
    parser.add_argument(
        "--security",
        choices=("plaintext", "sasl_ssl"),
        help="the 3-broker profile's client security (STACK_KAFKA_SECURITY)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mohallamart.stack.services import service_names

    # which Kafka processes exist depends on the profile (STACK_KAFKA_BROKERS, or the one the
    # STACK_DIR runs): `Stack` checks the names, and says which exist
    services = ", ".join(service_names(1)).replace(
        "kafka,", "kafka (STACK_KAFKA_BROKERS=3: kafka-controller-1..3, kafka-broker-1..3),"
    )

    stack = sub.add_parser("stack", help="the local stack of real services (no Docker)")
    ssub = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = ssub.add_parser("up", help="start every service (or those named) and wait until healthy")
    up.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"any of: {services} (default: all)"
    )
    _add_profile_options(up)
    up.set_defaults(func=_cmd_stack_up)
    down = ssub.add_parser("down", help="stop every service this stack started (by PID)")
    down.add_argument("services", nargs="*", metavar="SERVICE", help="default: all")
    down.set_defaults(func=_cmd_stack_down)
    st = ssub.add_parser("status", help="each service, its address and whether it is healthy")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_stack_status)
    start = ssub.add_parser("start", help="start one service (and what it depends on)")
    start.add_argument("services", nargs=1, metavar="SERVICE", help=f"one of: {services}")
    _add_profile_options(start)
    start.set_defaults(func=_cmd_stack_up)
    stop = ssub.add_parser("stop", help="stop one service (only that process, by its PID)")
    stop.add_argument("services", nargs=1, metavar="SERVICE", help=f"one of: {services}")
    stop.set_defaults(func=_cmd_stack_down)
