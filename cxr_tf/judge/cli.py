"""``cxr-tf judge ...``: serve the rater app, manage raters, export judgments.

    cxr-tf judge add-rater NAME --db judgments.sqlite         prints the rater's token (once)
    cxr-tf judge rotate-token NAME --db judgments.sqlite      new token, old one revoked
    cxr-tf judge deactivate NAME --db judgments.sqlite        (and ``activate``)
    cxr-tf judge raters --testset DIR --db judgments.sqlite   progress per rater
    cxr-tf judge serve --testset DIR --db judgments.sqlite [--host 127.0.0.1 --port 8765]
    cxr-tf judge export --testset DIR --db judgments.sqlite [--csv FILE] [--require-complete]

``--db`` is a SQLAlchemy URL (``postgresql+psycopg://user@host/db``) or a SQLite file path;
``$CXR_JUDGE_DB`` is used when it is omitted.
"""
from __future__ import annotations

import argparse
import logging
import os

from cxr_tf.errors import CXRConfigError

logger = logging.getLogger("cxr_tf.judge")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="judge_cmd", required=True)

    def with_db(sp, testset=False):
        sp.add_argument("--db", default=os.environ.get("CXR_JUDGE_DB"),
                        help="SQLAlchemy URL or SQLite file (default $CXR_JUDGE_DB)")
        if testset:
            sp.add_argument("--testset", required=True, help="BAPPS-layout test set folder with manifest.csv")
        return sp

    s = with_db(sub.add_parser("serve", help="run the rating web app"), testset=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--threads", type=int, default=8)
    s.add_argument("--secure-cookies", action="store_true", help="mark the session cookie Secure (behind HTTPS)")
    a = with_db(sub.add_parser("add-rater", help="create a rater and print their login token"))
    a.add_argument("name")
    a.add_argument("--seed", type=int, default=None, help="item-order seed (default: random, stored)")
    for cmd, text in (("rotate-token", "give a rater a new token (the old one stops working)"),
                      ("deactivate", "refuse a rater's token and sessions"), ("activate", "re-enable a rater")):
        with_db(sub.add_parser(cmd, help=text)).add_argument("name")
    with_db(sub.add_parser("raters", help="list raters and their progress"), testset=True)
    e = with_db(sub.add_parser("export", help="write judge/*.npy, same/*.npy and judgments.csv"), testset=True)
    e.add_argument("--csv", default=None, help="raw judgments CSV (default DIR/judgments.csv)")
    e.add_argument("--require-complete", action="store_true", help="fail if any item has no judgment")


def run(a: argparse.Namespace) -> int:
    if not a.db:
        raise CXRConfigError("no database: pass --db URL_OR_SQLITE_FILE or set $CXR_JUDGE_DB")
    if a.judge_cmd == "serve":
        from .app import serve

        serve(a.testset, a.db, a.host, a.port, a.threads, a.secure_cookies)
        return 0
    from .db import JudgmentStore

    store = JudgmentStore(a.db)
    try:
        if a.judge_cmd == "add-rater":
            token = store.add_rater(a.name, a.seed)
            print(f"rater {a.name!r} created; token (shown once, give it to the rater privately):\n{token}")
        elif a.judge_cmd == "rotate-token":
            print(f"new token for {a.name!r} (the old one no longer works):\n{store.rotate_token(a.name)}")
        elif a.judge_cmd in ("deactivate", "activate"):
            store.set_active(a.name, a.judge_cmd == "activate")
            print(f"rater {a.name!r} {a.judge_cmd}d")
        elif a.judge_cmd == "raters":
            from .service import RatingService

            service = RatingService(a.testset, store)
            print(f"{'rater':<24} {'active':<6} answered / {service.total}")
            for r in store.raters():
                done, total = service.progress(r)
                print(f"{r.name:<24} {str(r.active):<6} {done} / {total}")
        elif a.judge_cmd == "export":
            from .export import export_judgments

            s = export_judgments(a.testset, store, a.csv, a.require_complete)
            logger.info(f"{s.judgments} judgments -> {s.written} judgment files, raw CSV {s.csv_path}")
            if s.unjudged:
                logger.warning(f"warning: {s.unjudged} item(s) have no judgment yet and got no .npy "
                               "(the original LPIPS loaders need every item judged)")
    finally:
        store.close()
    return 0
