"""`tuneforge data cache`: list the token caches (size, source file, age, last use) or clear them; the work is
data.cache_admin's, on the folder data.token_cache.data_cache_dir() names.

    tuneforge data cache
    tuneforge data cache --clear [--older-than DAYS]
"""

from __future__ import annotations

import argparse

from tuneforge.errors import ConfigError


def cmd_cache(args: argparse.Namespace) -> int:
    from tuneforge.data.cache_admin import MAX_GB_ENV, clear, list_caches, max_bytes_from_env, table
    from tuneforge.data.token_cache import data_cache_dir  # numpy and the config schema: only when run

    root = data_cache_dir()
    if args.older_than is not None and not args.clear:
        raise ConfigError("--older-than DAYS goes with --clear (tuneforge data cache --clear --older-than 30)")
    if args.older_than is not None and args.older_than < 0:
        raise ConfigError(f"--older-than {args.older_than:g}: expected a number of days >= 0")
    if args.clear:
        removed, skipped = clear(root, args.older_than)
        freed = sum(e.size for e in removed) / 2**20
        print(f"removed {len(removed)} cache(s) from {root}, {freed:,.1f} MB freed"
              + (f"; {len(skipped)} in use kept: {', '.join(e.key[:12] for e in skipped)}" if skipped else ""))
        return 0
    entries = list_caches(root)
    if not entries:
        print(f"no data caches in {root}")
        return 0
    print(table(entries))
    cap = max_bytes_from_env()
    print(f"{len(entries)} cache(s), {sum(e.size for e in entries) / 2**20:,.1f} MB in {root}"
          + (f" (cap {MAX_GB_ENV}={cap / 2**30:g})" if cap is not None else ""))
    return 0


def register(dsub) -> None:
    """`tuneforge data cache` under the `data` command's subparsers."""
    p = dsub.add_parser("cache", help="list the token caches (size, source, age, last use) or clear them")
    p.add_argument("--clear", action="store_true", help="remove caches (all, or with --older-than)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --clear: only those unused for DAYS")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_cache)
