"""``ddmr serve``: a local web application to register a pair and look at the result.

    ddmr serve [--host 127.0.0.1] [--port 8080] [--model NAME|CKPT ...] [--device cpu]
               [--max-upload-mb 512] [--results 8] [--keep 30m]

Loads the models once (default: the shipped ``brain-mr``; the first is the page's
default), builds the example pair, then serves the page (:mod:`ddmr_core.serve`) until
Ctrl-C or SIGTERM, and removes every upload and result folder on the way out. It binds
to 127.0.0.1 (this machine only) unless ``--host`` says otherwise. Nothing is fetched
from the internet: the page's script and style ship inside the package.
"""

from __future__ import annotations

from . import duration



def add_arguments(parser):
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    parser.add_argument("--model", nargs="+", action="extend", metavar="NAME|CKPT",
                        help="shipped model names or checkpoint files offered on the page, the first by default "
                             "(default: brain-mr)")
    parser.add_argument("--device", default="cpu", help="torch device of the networks (default: cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=512.0,
                        help="largest upload accepted, all files of a request together, in MB (default 512)")
    parser.add_argument("--results", type=int, default=8, help="results kept at once (default 8)")
    parser.add_argument("--keep", type=duration, default=1800.0, metavar="DURATION",
                        help="how long a result is kept after its last use, e.g. 30m (default)")


def run(args) -> int:
    import ipaddress
    import logging
    from http.server import HTTPServer

    from ..errors import DdmrError
    from ..serve import create_app

    if not 0 <= args.port < 65536:
        raise DdmrError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.results < 1:
        raise DdmrError("--max-upload-mb must be positive and --results at least 1")
    app = create_app(args.model or ["brain-mr"], device=args.device, max_upload_mb=args.max_upload_mb,
                     max_results=args.results, result_ttl_s=args.keep)
    server = app.extensions["ddmr"]
    try:
        from werkzeug.serving import make_server

        print(f"models: {', '.join(server.models)} (default {server.default_model})")
        server.example()  # a few seconds, once: the first request does not wait for it
        print("example pair ready")
        try:
            http = make_server(args.host, args.port, app, threaded=True)
        except (OSError, SystemExit) as exc:  # werkzeug exits when the port is taken
            raise DdmrError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        try:
            loopback = ipaddress.ip_address(args.host).is_loopback
        except ValueError:
            loopback = args.host == "localhost"
        if not loopback:
            print(f"warning: listening on {args.host}: anyone who can reach it can upload images and run models")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per slice request
        print(f"ddmr serve: http://{args.host}:{http.server_port}/ (Ctrl-C stops)", flush=True)
        try:
            # the standard library's loop, not werkzeug's override, which swallows Ctrl-C and
            # SIGTERM: ddmr stops with its usual line and status (130, 143) instead
            HTTPServer.serve_forever(http)
        finally:
            http.server_close()
    finally:
        server.close()
    return 0
