"""`embergpt serve`: serve a checkpoint over HTTP (web UI, JSON API, OpenAI-compatible API)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

DESCRIPTION = """Serve a checkpoint over HTTP: the web UI at /, embergpt's JSON API at /api, an OpenAI-compatible API at
/v1, Prometheus text at /metrics. Binds 127.0.0.1 unless --host says otherwise. The decode step is compiled and
warmed up before traffic (--compile; /api/health says "ready": false meanwhile)."""
EXAMPLE = """examples:
  embergpt serve --checkpoint runs/shakespeare/final                 # http://127.0.0.1:8787/
  embergpt serve --load-latest runs/shakespeare --port 8000 --compile off"""

# flag -> (type, help); the names, env vars and defaults live in embergpt.serve.settings
_LIMITS: dict[str, tuple[type, str]] = {
    "max_prompt_bytes": (int, "largest prompt in UTF-8 bytes (default 8192); the body may be 4 KiB more"),
    "max_output_tokens": (int, "largest max_tokens a request may ask for (default 512)"),
    "rate_limit_rps": (float, "requests per second per client IP (default 5; 0 disables rate limiting)"),
    "rate_limit_burst": (int, "requests a client may make at once before the rate applies (default 10)"),
    "max_batch": (int, "requests decoded together by continuous batching (default 16)"),
    "max_queue": (int, "requests allowed to wait for a batch slot before 503 server_busy (default 256)"),
    "max_attention_tokens": (int, "prompt + output tokens above which return_attention is refused (default 256)"),
    "max_header_bytes": (int, "largest request line + headers in bytes; more gets 431 (default 32768)"),
    "header_timeout": (float, "seconds to receive a request's headers, else 408 and close (default 10)"),
    "body_timeout": (float, "seconds to receive a request's body once its headers are in, else 408 (default 15)"),
    "keep_alive_timeout": (float, "seconds an idle kept-alive connection stays open (default 5)"),
    "send_timeout": (float, "seconds the server waits for a client that stopped reading its answer (default 30)"),
    "max_connections": (int, "open connections; each one beyond gets 503 and is closed (default 512)"),
    "max_connections_per_client": (
        int,
        "open connections from one address, beyond which 503 (default 64; a --forwarded-allow-ips proxy has none)",
    ),
    "forwarded_allow_ips": (
        str,
        "comma-separated proxy addresses/networks (or *) whose X-Forwarded-For is believed for the rate limit "
        "(default: none; the peer address is used)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="checkpoint directory to serve (no default: give this or --load-latest)")
    src.add_argument("--load-latest", metavar="OUT_DIR",
                     help="serve OUT_DIR/final, else its newest step-*/ (no default: give this or --checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 = any free port)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: $EMBERGPT_DEVICE or best)")
    parser.add_argument("--compile", default=None, choices=["auto", "off", "default", "max-autotune"],
                        help="compile the decode step before serving (default auto: what `embergpt bench serve` "
                        "measured fastest on this kind of device, see README) [EMBERGPT_COMPILE]")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="the model's compute dtype (default auto: by device, as --compile) [EMBERGPT_DTYPE]")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for the model (default: torch's choice)"
    )
    parser.add_argument("--accept-any-model", action="store_true", default=None,
                        help="answer /v1 requests whatever their `model` names (default: only the served model's id; "
                        "others get 404 model_not_found) [EMBERGPT_ACCEPT_ANY_MODEL]")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default warning)")
    limits = parser.add_argument_group("limits (each also settable as EMBERGPT_<NAME>; the flag wins)")
    for name, (kind, help_text) in _LIMITS.items():
        env = "EMBERGPT_" + name.upper()
        limits.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"{help_text} [{env}]")


def network_warning(host: str) -> str | None:
    """The warning to print when `host` lets other machines connect (anything but localhost or a loopback IP)."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass  # a host name other than localhost: it may resolve to a public address
    return (
        f"embergpt serve: warning: --host {host} makes the server reachable from the network, and it has no "
        f"authentication; use --host 127.0.0.1 to keep it on this machine"
    )


def run(args: argparse.Namespace) -> int:
    from embergpt.serve.server import resolve_host, serve
    from embergpt.serve.settings import resolve_settings
    from embergpt.whole_numbers import check_threads

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535 (0 = any free port), got {args.port}")
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    settings = resolve_settings({**{name: getattr(args, name) for name in _LIMITS},
                                 "compile": args.compile, "dtype": args.dtype,
                                 "accept_any_model": args.accept_any_model})
    resolve_host(args.host, args.port)  # a host that cannot be bound is refused before warning about it
    warning = network_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # asked for on the command line: this process is the server
    serve(
        checkpoint=args.checkpoint,
        load_latest=args.load_latest,
        host=args.host,
        port=args.port,
        settings=settings,
        device=args.device,
        log_level=args.log_level,
    )
    return 0
