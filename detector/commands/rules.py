"""`detector rules check|list`: validate rule files, list what is loaded."""

from __future__ import annotations

import argparse
import sys

from detector import errors
from detector.commands.common import load_ruleset


RULES_EPILOG = """\
examples:
  detector rules check                 the shipped rules/
  detector rules check my-rules/ extra.yaml
  detector rules list

exit codes: 0 ok, 4 a rule file is invalid (FILE:LINE: what is wrong)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rules", help="validate and list detection rules (rules/*.yaml)",
                       description="Rules are YAML files, one rule each (or kind: allowlist). "
                       "An invalid file is reported as FILE:LINE: what is wrong.",
                       epilog=RULES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="action", metavar="ACTION")
    for name, helptext in (("check", "validate rule files; exit 4 on the first error"),
                           ("list", "list the rules that would be loaded")):
        q = rs.add_parser(name, help=helptext, description=helptext, epilog=RULES_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("rules", nargs="*", metavar="PATH", help="files or folders (default: rules/)")
        q.set_defaults(func=run, action=name)
    p.set_defaults(func=lambda a: (p.print_help(), errors.USAGE)[1])


def run(args: argparse.Namespace) -> int:
    args.rules = args.rules or None
    rs = load_ruleset(args)
    if args.action == "check":
        print(f"ok: {len(rs.rules)} rules in {len(rs.sources)} files", file=sys.stderr)
        return errors.OK
    for r in rs.rules:
        state = "" if r.enabled else "  (disabled)"
        print(f"{r.id:<16} {r.detector:<10} {r.severity:<9} {r.technique_id:<10} {r.title}{state}")
    a = rs.allowlist
    print(f"global allowlist: {len(a.domains)} domains, {len(a.processes)} processes, "
          f"{len(a.resolvers)} resolver networks, {len(a.clients)} client networks")
    return errors.OK
