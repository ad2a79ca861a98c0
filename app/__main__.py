"""``python -m app``: start the ADAPT app (embedded model by default).

Host and port follow Gradio's conventions: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (or
``--host`` / ``--port``). The Admin tab exists only when ``ADAPT_ADMIN_TOKEN`` is set.
"""

from __future__ import annotations

import argparse
import logging
import os


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=None, help="bind address (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    ap.add_argument("--model", default=None,
                    help="default backbone: 'embedded' (default, or $ADAPT_MODEL), a local checkpoint or hub id")
    ap.add_argument("--share", action="store_true", help="create a public gradio.live link")
    ap.add_argument("--max-jobs", type=int, default=int(os.environ.get("ADAPT_MAX_JOBS", "1")),
                    help="admin jobs running at once (others wait)")
    ap.add_argument("--jobs-dir", default=None, help="where admin jobs keep their records and outputs "
                                                     "(default: $ADAPT_JOBS_DIR or runs/jobs)")
    ap.add_argument("--no-warm", action="store_true", help="load the model on first use instead of at start")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from . import build_app, launch

    demo = build_app(model=args.model, jobs_root=args.jobs_dir, max_jobs=args.max_jobs, warm=not args.no_warm)
    kwargs = {}
    if args.host:
        kwargs["server_name"] = args.host
    if args.port:
        kwargs["server_port"] = args.port
    if args.share:
        kwargs["share"] = True
    launch(demo, **kwargs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
