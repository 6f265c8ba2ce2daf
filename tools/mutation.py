"""Mutation testing of pixelgov's money and rule paths (issue 8) — slow, never run in CI.

    .venv/bin/python tools/mutation.py                     # the full run: ~1,630 mutants, ~35 min on 2 shared cores
    .venv/bin/python tools/mutation.py --quick             # money, spend and periods only (~10 min)
    .venv/bin/python tools/mutation.py --rerun-survivors   # after adding tests: only the last run's survivors
    .venv/bin/python tools/mutation.py --report-only       # print the last run's figures again

Tool: mutmut 3 (pinned: mutmut==3.8.1; install with `.venv/bin/pip install mutmut==3.8.1`).
mutmut 3 was chosen over cosmic-ray because it forks each mutant from one warmed-up pytest process
and runs only the tests that execute the mutated function (it records that in a first, clean run);
cosmic-ray starts a whole test command per mutant, which is hours here, not minutes.

What it does:
1. copies the working tree (not .venv, .git, caches) to a scratch directory (default
   $TMPDIR/pixelgov-mutation), so /work/main never sees mutmut's `mutants/` directory or its config;
2. writes mutmut's config into the scratch copy's pyproject.toml: the modules in MODULES are mutated,
   the test files in TESTS are the selection (SQLite-only: `-k "not postgresql"`), with
   `-p no:cacheprovider -x -q`, and hypothesis derandomized without a deadline (a slow mutant must
   not be "killed" by a timing flake, and two runs must agree);
3. runs `mutmut run`, then reads mutmut's result files and prints, per module: mutants, killed,
   survived, timeout, equivalent (by EQUIVALENT below) and the kill rate of the non-equivalent
   mutants; and lists each survivor as file:line, function, and the mutated line (old → new).

Counting: killed = the selection failed (timeouts are counted as killed too, and shown separately);
survived = the selection passed, or no selected test runs the function ("no tests"); a survivor
listed in EQUIVALENT counts as equivalent, not as survived. Rate = killed / (mutants - equivalent).
Only the functions in SCOPE are counted (pricing/book.py: the rounding and limits; ledger/policy/rules.py:
evaluate and validate_spec and the helpers they call); the others are mutated but reported only as
"out of scope".

Caveat: each mutant runs in a process forked from one that already ran the clean tests, so what that
process cached survives into it: `default_book()` is cached with its `area()` results, and a mutant of
`_area` is invisible through the default book. Tests that pin `_area` use a freshly parsed book.

Exit status: 0 if every module's rate meets TARGET, 1 if not, 2 if the tool or the clean run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MUTMUT_PIN = "mutmut==3.8.1"
TARGET = 0.95

#: The modules mutated (issue 8: pricing/ and the governor's money and rule paths).
MODULES = [
    "pricing/money.py",
    "pricing/quote.py",
    "pricing/book.py",
    "ledger/store/spend.py",
    "ledger/policy/rules.py",
    "ledger/policy/periods.py",
]
QUICK_MODULES = ["pricing/money.py", "ledger/store/spend.py", "ledger/policy/periods.py"]

#: The targeted selection: pure and SQLite-only tests that exercise the modules above. mutmut
#: narrows it further per function to the tests that actually execute that function.
#:   money, quote, book -> test_pricing, test_pricing_properties, test_price_book
#:   rules, periods     -> test_rules
#:   spend, and what the others let through -> test_mutation_kills (pure; the SQL sums on an
#:   in-memory SQLite). test_governor / test_reports / test_hotpath also reach these modules, but
#:   through a ledger per test: with them a run took over an hour on this shared 2-core machine.
TESTS = [
    "tests/test_pricing.py",
    "tests/test_pricing_properties.py",
    "tests/test_price_book.py",
    "tests/test_rules.py",
    "tests/test_mutation_kills.py",
]
QUICK_TESTS = [
    "tests/test_pricing.py",
    "tests/test_rules.py",
    "tests/test_mutation_kills.py",
]
PYTEST_ARGS = ["-p", "no:cacheprovider", "-x", "-q", "-k", "not postgresql", "-p", "_mutation_hypothesis"]

#: Functions counted per module (None: all). Names as mutmut spells them: `f` or `Class.f`.
SCOPE: dict[str, set[str] | None] = {
    "pricing/money.py": None,
    "pricing/quote.py": None,
    "pricing/book.py": {"PriceBook.endpoint", "PriceBook.area", "_area", "_build"},
    "ledger/store/spend.py": None,
    "ledger/policy/rules.py": {
        "evaluate",
        "validate_spec",
        "_glob",
        "_spec_of",
        "Rule.applies_to",
        "Rule.describe_limit",
        "Rule.counted",
    },
    "ledger/policy/periods.py": None,
}

#: Surviving mutants that cannot change any observable outcome, keyed by
#: (file, original line, mutated line) — stripped source text, so the key survives line moves.
_HELD_ONLY_ESTIMATES = "HELD_AS counts only estimates: actual and adjustments never reach the held term"
_QUANTIZE_TEST = (
    "amount != amount.quantize(NANO) holds iff the amount has digits below 1e-9, whatever the "
    "rounding mode; |amount| <= MAX_USD is 19 digits, so the 28-digit thread context never overflows"
)
_TO_INTEGRAL = "to_integral_value is exact (never rounds to a precision) and its rounding is given explicitly"
_USD_ONLY = "the book schema accepts no currency but USD, so reading it or defaulting to USD is the same"
_CACHE_BOUND = "the bound of PriceBook.area's cache: one entry more or less is kept, every area is the same"
_SQL_TYPE_ONLY = (
    "type_coerce never renders SQL and an untyped literal 0 is the same integer: the types only steer "
    "SQLAlchemy's Python-side processing, and the CASE still returns the raw nano-USD integer "
    "(test_the_sql_sums_agree_with_counted_row_by_row checks it on the ledger's Money columns)"
)
_RSTRIP_X = "format(amount, 'f') never contains an 'X', so adding X to the stripped set strips nothing more"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "pricing/money.py",
        "return value if isinstance(value, Decimal) else Decimal(value)",
        "return value if (isinstance(value, Decimal)) and False else Decimal(value)",
    ): "Decimal(d) of a Decimal is an equal Decimal (CPython even returns d itself)",
    (
        "pricing/money.py",
        "if amount != amount.quantize(NANO, rounding=ROUND_HALF_UP):",
        "if amount != amount.quantize(NANO, rounding=None):",
    ): _QUANTIZE_TEST,
    (
        "pricing/money.py",
        "if amount != amount.quantize(NANO, rounding=ROUND_HALF_UP):",
        "if amount != amount.quantize(NANO, ):",
    ): _QUANTIZE_TEST,
    (
        "pricing/money.py",
        "exact = Context(prec=digits + 30)  # scaling by 10^9 and rounding must not lose a digit",
        "exact = Context(prec=digits + 31)  # scaling by 10^9 and rounding must not lose a digit",
    ): "any precision of at least digits + 10 keeps amount x 10^9 exact",
    (
        "pricing/money.py",
        "return int(amount.scaleb(9, context=exact).to_integral_value(rounding=ROUND_CEILING, context=exact))",
        "return int(amount.scaleb(9, context=exact).to_integral_value(rounding=ROUND_CEILING, context=None))",
    ): _TO_INTEGRAL,
    (
        "pricing/money.py",
        "return int(amount.scaleb(9, context=exact).to_integral_value(rounding=ROUND_CEILING, context=exact))",
        "return int(amount.scaleb(9, context=exact).to_integral_value(rounding=ROUND_CEILING, ))",
    ): _TO_INTEGRAL,
    (
        "pricing/money.py",
        "exact = Context(prec=len(amount.as_tuple().digits) + 10)  # never short of digits for a huge amount",
        "exact = Context(prec=len(amount.as_tuple().digits) + 11)  # never short of digits for a huge amount",
    ): "any precision of at least digits + 3 quantizes to 0.001 exactly",
    ("pricing/money.py", 'text = text.rstrip("0").rstrip(".")', 'text = text.rstrip("XX0XX").rstrip(".")'): _RSTRIP_X,
    ("pricing/money.py", 'text = text.rstrip("0").rstrip(".")', 'text = text.rstrip("0").rstrip("XX.XX")'): _RSTRIP_X,
    (
        "pricing/money.py",
        'return "0" if text in ("", "-0") else text',
        'return "0" if text in ("XXXX", "-0") else text',
    ): "text is never empty: format(amount, 'f') always has a digit before the point, which rstrip keeps",
    (
        "pricing/money.py",
        'text = format(amount, "f")',
        'text = format(amount, "F")',
    ): "'F' differs from 'f' only in spelling NAN/INF; money amounts are finite (parse_usd refuses the others)",
    (
        "ledger/store/spend.py",
        "return total if total > 0 else ZERO",
        "return total if total >= 0 else ZERO",
    ): "at exactly zero it returns total (== 0) instead of ZERO: the same value",
    (
        "ledger/store/spend.py",
        "return case((total > 0, total), else_=zero)",
        "return case((total >= 0, total), else_=zero)",
    ): "at exactly zero the CASE yields total (= 0) instead of 0: the same value",
    (
        "ledger/store/spend.py",
        "return Counted(_term(HELD_AS[s], estimate, actual, adjustments),"
        " _term(SPENT_AS[s], estimate, actual, adjustments))",
        "return Counted(_term(HELD_AS[s], estimate, None, adjustments),"
        " _term(SPENT_AS[s], estimate, actual, adjustments))",
    ): _HELD_ONLY_ESTIMATES,
    (
        "ledger/store/spend.py",
        "return Counted(_term(HELD_AS[s], estimate, actual, adjustments),"
        " _term(SPENT_AS[s], estimate, actual, adjustments))",
        "return Counted(_term(HELD_AS[s], estimate, actual, None), _term(SPENT_AS[s], estimate, actual, adjustments))",
    ): _HELD_ONLY_ESTIMATES,
    (
        "ledger/store/spend.py",
        "return _sql_case(HELD_AS, status, estimate, actual, adjustments)",
        "return _sql_case(HELD_AS, status, estimate, None, adjustments)",
    ): _HELD_ONLY_ESTIMATES,
    (
        "ledger/store/spend.py",
        "return _sql_case(HELD_AS, status, estimate, actual, adjustments)",
        "return _sql_case(HELD_AS, status, estimate, actual, None)",
    ): _HELD_ONLY_ESTIMATES,
    (
        "ledger/policy/rules.py",
        "f\"{rule.period or 'rolling ' + (format_window(rule.window_seconds) or '')}\"",
        "f\"{rule.period or 'rolling ' + (format_window(rule.window_seconds) or 'XXXX')}\"",
    ): "the fallback is for a spend-limit with neither period nor window, which validate_spec never accepts",
    ("pricing/book.py", 'currency=data.get("currency", "USD"),', 'currency=data.get(None, "USD"),'): _USD_ONLY,
    (
        "pricing/book.py",
        'currency=data.get("currency", "USD"),',
        'currency=data.get("XXcurrencyXX", "USD"),',
    ): _USD_ONLY,
    ("pricing/book.py", 'currency=data.get("currency", "USD"),', 'currency=data.get("CURRENCY", "USD"),'): _USD_ONLY,
    ("pricing/book.py", "if len(self._areas) > 65536:", "if len(self._areas) >= 65536:"): _CACHE_BOUND,
    ("pricing/book.py", "if len(self._areas) > 65536:", "if len(self._areas) > 65537:"): _CACHE_BOUND,
    (
        "ledger/store/spend.py",
        "return case(*whens, else_=literal(0, BigInteger))",
        "return case(*whens, else_=literal(0, None))",
    ): _SQL_TYPE_ONLY,
    (
        "ledger/store/spend.py",
        "return case(*whens, else_=literal(0, BigInteger))",
        "return case(*whens, else_=literal(0, ))",
    ): _SQL_TYPE_ONLY,
    ("ledger/store/spend.py", "zero = literal(0, BigInteger)", "zero = literal(0, None)"): _SQL_TYPE_ONLY,
    ("ledger/store/spend.py", "zero = literal(0, BigInteger)", "zero = literal(0, )"): _SQL_TYPE_ONLY,
    (
        "ledger/store/spend.py",
        "total = func.coalesce(type_coerce(actual, BigInteger), zero) + func.coalesce(",
        "total = func.coalesce(type_coerce(actual, None), zero) + func.coalesce(",
    ): _SQL_TYPE_ONLY,
    (
        "ledger/store/spend.py",
        "type_coerce(adjustments, BigInteger), zero",
        "type_coerce(adjustments, None), zero",
    ): _SQL_TYPE_ONLY,
    (
        "ledger/store/spend.py",
        "return type_coerce(estimate, BigInteger)",
        "return type_coerce(estimate, None)",
    ): _SQL_TYPE_ONLY,
    (
        "ledger/policy/rules.py",
        'values["limit_amount"] = parse_usd(str(raw), allow_zero=False)',
        'values["limit_amount"] = parse_usd(str(raw), allow_zero=None)',
    ): "allow_zero is only tested for truth: None refuses zero exactly as False does",
    (
        "ledger/policy/rules.py",
        'if not str(name).strip(" ").isprintable():',
        'if not str(name).strip("XX XX").isprintable():',
    ): "stripping more printable characters (X) off the ends cannot change whether the rest is printable",
    (
        "ledger/policy/periods.py",
        "if window_seconds // g >= 24:",
        "if window_seconds / g >= 24:",
    ): "for integers, floor(w / g) >= 24 exactly when w / g >= 24",
    (
        "ledger/policy/periods.py",
        'match = _WINDOW.match(text or "")',
        'match = _WINDOW.match(text or "XXXX")',
    ): "neither '' nor 'XXXX' matches the window pattern: the same error, which quotes the original text",
}


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text)


_EQUIVALENT_NORMALIZED = {(f, _norm(old), _norm(new)): why for (f, old, new), why in EQUIVALENT.items()}


def stale_equivalents(root: Path) -> list[tuple[str, str]]:
    """EQUIVALENT keys whose original line is no longer in the source (moved by a reformat or an edit)."""
    stale = []
    for f, old, _new in EQUIVALENT:
        lines = {_norm(line) for line in (root / f).read_text().splitlines()}
        if _norm(old) not in lines:
            stale.append((f, old))
    return stale


_PLUGIN = '''"""Loaded by tools/mutation.py: hypothesis without timing flakes, the same examples every run."""
from hypothesis import settings

settings.register_profile("mutation", deadline=None, derandomize=True, print_blob=False)
settings.load_profile("mutation")
'''


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {
        ".venv",
        ".git",
        "mutants",
        ".hypothesis",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "__pycache__",
        "build",
        "dist",
    }
    return {n for n in names if n in skip or n.endswith(".egg-info") or n.endswith((".db", ".db-wal", ".db-shm"))}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(scratch: Path, modules: list[str], tests: list[str]) -> None:
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(REPO, scratch, ignore=_ignore, symlinks=True)
    (scratch / "_mutation_hypothesis.py").write_text(_PLUGIN)
    tests = [t for t in tests if (scratch / t).exists()]
    pyproject = scratch / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section: remove it (the script writes its own)")
    pyproject.write_text(
        text
        + f"""
[tool.mutmut]
source_paths = ["pricing", "ledger", "pixelgov"]
only_mutate = {_toml_list(modules)}
also_copy = ["migrations", "alembic.ini", "_mutation_hypothesis.py"]
pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}
pytest_add_cli_args_test_selection = {_toml_list(tests)}
use_git_change_detection = false
timeout_multiplier = 10.0
"""
    )


def run_mutmut(scratch: Path, children: int, deselect: list[str], names: list[str] | None = None) -> int:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for var in ("PIXELGOV_DATABASE_URL", "PIXELGOV_TEST_POSTGRES_URL", "FAL_KEY", "PIXELGOV_PRICE_BOOK"):
        env.pop(var, None)
    if deselect:  # tests known to fail on the working tree for reasons unrelated to these modules
        pyproject = scratch / "pyproject.toml"
        extra = [a for d in deselect for a in ("--deselect", d)]
        pyproject.write_text(
            pyproject.read_text().replace(
                f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}",
                f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS + extra)}",
            )
        )
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *(names or [])]
    shown = cmd if not names else [*cmd[:6], f"<{len(names)} survivors>"]
    print("$", " ".join(shown), f"   (in {scratch})", flush=True)
    log = scratch / "mutmut-run.log"
    with open(log, "w") as out:
        proc = subprocess.run(  # noqa: S603 - our own interpreter running mutmut
            cmd,
            cwd=scratch,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    print("\n".join(line for line in tail[-8:] if line.strip()))
    return proc.returncode


_STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
}


def _function_of(mutant: str, module: str) -> str:
    """`pricing.book.xǁPriceBookǁarea__mutmut_3` → `PriceBook.area`; `…x__area__mutmut_1` → `_area`."""
    name = mutant.removeprefix(module.removesuffix(".py").replace("/", ".") + ".")
    name = re.sub(r"__mutmut_\d+$", "", name)
    if name.startswith("xǁ"):
        return ".".join(p for p in name[2:].split("ǁ") if p)
    return name.removeprefix("x_")


def _changed_line(diff: str, source_lines: list[str], function: str) -> tuple[int, str, str]:
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    old = removed[0].strip() if removed else ""
    new = added[0].strip() if added else ""
    start = 0
    short = function.split(".")[-1]
    for i, text in enumerate(source_lines):
        if re.match(rf"\s*(async\s+)?def {re.escape(short)}\b", text):
            start = i
            break
    for i in range(start, len(source_lines)):
        if old and source_lines[i].strip() == old:
            return i + 1, old, new
    return start + 1, old, new


def collect(scratch: Path, modules: list[str]) -> dict[str, list[dict[str, object]]]:
    os.chdir(scratch)  # mutmut reads its config from the working directory when imported
    sys.path.insert(0, str(scratch))
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    results: dict[str, list[dict[str, object]]] = {}
    for module in modules:
        meta = scratch / "mutants" / (module + ".meta")
        if not meta.exists():
            results[module] = []
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        source_lines = (scratch / module).read_text().splitlines()
        rows = []
        for name, code in sorted(codes.items()):
            status = _STATUS.get(code, "not checked" if code is None else f"suspicious ({code})")
            function = _function_of(name, module)
            row: dict[str, object] = {"name": name, "status": status, "function": function}
            scope = SCOPE.get(module)
            row["in_scope"] = scope is None or function in scope
            if status not in ("killed", "timeout"):
                diff = get_diff_for_mutant(name, path=module)
                line, old, new = _changed_line(diff, source_lines, function)
                row.update(line=line, old=old, new=new)
                reason = _EQUIVALENT_NORMALIZED.get((module, _norm(old), _norm(new)))
                if reason:
                    row["status"] = "equivalent"
                    row["reason"] = reason
            rows.append(row)
        results[module] = rows
    return results


def report(results: dict[str, list[dict[str, object]]]) -> bool:
    header = (
        f"{'module':<20} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'equiv':>5} {'rate':>7}"
        "  out-of-scope"
    )
    print()
    print(header)
    print("-" * len(header))
    totals: dict[str, int] = defaultdict(int)
    ok = True
    survivors: list[str] = []
    for module, rows in results.items():
        counted = [r for r in rows if r["in_scope"]]
        c = {k: sum(1 for r in counted if r["status"] == k) for k in ("killed", "timeout", "equivalent")}
        n = len(counted)
        survived = n - c["killed"] - c["timeout"] - c["equivalent"]
        denominator = n - c["equivalent"]
        rate = (c["killed"] + c["timeout"]) / denominator if denominator else 1.0
        ok = ok and rate >= TARGET
        for key, value in (
            ("mutants", n),
            ("killed", c["killed"]),
            ("timeout", c["timeout"]),
            ("survived", survived),
            ("equivalent", c["equivalent"]),
        ):
            totals[key] += value
        out = len(rows) - n
        out_killed = sum(1 for r in rows if not r["in_scope"] and r["status"] in ("killed", "timeout"))
        print(
            f"{module:<20} {n:>7} {c['killed']:>6} {c['timeout']:>7} {survived:>8} {c['equivalent']:>5} "
            f"{rate:>7.1%}  {out} ({out_killed} killed)"
        )
        for r in counted:
            if r["status"] not in ("killed", "timeout", "equivalent"):
                survivors.append(
                    f"  {module}:{r['line']}  {r['function']}  [{r['status']}]  {r['name']}\n"
                    f"      - {r['old']}\n      + {r['new']}"
                )
    denominator = totals["mutants"] - totals["equivalent"]
    rate = (totals["killed"] + totals["timeout"]) / denominator if denominator else 1.0
    print("-" * len(header))
    print(
        f"{'total':<20} {totals['mutants']:>7} {totals['killed']:>6} {totals['timeout']:>7} "
        f"{totals['survived']:>8} {totals['equivalent']:>5} {rate:>7.1%}"
    )
    print(f"\nkill rate of non-equivalent mutants: {rate:.1%} (target {TARGET:.0%}; timeouts count as killed)")
    if survivors:
        print(f"\nsurvivors ({len(survivors)}):")
        print("\n".join(survivors))
    equivalents = [(m, r) for m, rows in results.items() for r in rows if r["in_scope"] and r["status"] == "equivalent"]
    if equivalents:
        print(f"\nequivalent ({len(equivalents)}):")
        for m, r in equivalents:
            print(f"  {m}:{r['line']}  {r['old']}  →  {r['new']}   ({r['reason']})")
    return ok and rate >= TARGET


def rerun_survivors(scratch: Path, modules: list[str], tests: list[str], args: argparse.Namespace) -> int:
    """Re-run the last run's survivors with the current tests; a module whose source changed since is
    re-run whole (its mutants are numbered anew)."""
    rerun = scratch.with_name(scratch.name + "-rerun")
    now = rerun if args.report_only else REPO  # --report-only: the sources the last re-run had
    changed = [m for m in modules if (now / m).read_bytes() != (scratch / m).read_bytes()]
    cwd = Path.cwd()
    previous = collect(scratch, modules)
    os.chdir(cwd)
    names = [
        str(r["name"])
        for m, rows in previous.items()
        if m not in changed
        for r in rows
        if r["in_scope"] and r["status"] not in ("killed", "timeout", "equivalent")
    ]
    names += [m.removesuffix(".py").replace("/", ".") + ".*" for m in changed]
    if changed:
        print(f"changed since the last run, re-run whole: {', '.join(changed)}")
    if names:
        code = 0
        if not args.report_only:  # with --report-only: merge the results of the last re-run again
            prepare(rerun, modules, tests)
            code = run_mutmut(rerun, args.max_children, args.deselect, names)
        if code != 0:
            print(f"mutmut failed (exit {code}); see {rerun / 'mutmut-run.log'}", file=sys.stderr)
            return 2
        again = collect(rerun, modules)
        by_name = {str(r["name"]): r for rows in again.values() for r in rows}
        for m, rows in previous.items():
            if m in changed:
                previous[m] = again[m]
                continue
            for i, r in enumerate(rows):
                if r["name"] in names:
                    rows[i] = by_name[str(r["name"])]
    if args.json:
        (cwd / args.json).write_text(json.dumps(previous, indent=1, ensure_ascii=False))
    return 0 if report(previous) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="money, spend and periods with pure tests only")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pixelgov-mutation",
        help="the scratch copy to run in (wiped first)",
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (the machine is shared)")
    parser.add_argument(
        "--deselect",
        action="append",
        default=[],
        metavar="NODEID",
        help="a test to leave out (one failing on the working tree for another reason)",
    )
    parser.add_argument("--report-only", action="store_true", help="re-read the results of the last run")
    parser.add_argument("--json", type=Path, help="also write every mutant's result to this file")
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="after adding tests: re-run only the last run's (in --scratch) survivors, in a fresh "
        "copy (<scratch>-rerun), and report the merged result; the sources must be unchanged",
    )
    args = parser.parse_args()
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print(f"mutmut is not installed: .venv/bin/pip install {MUTMUT_PIN}", file=sys.stderr)
        return 2
    modules = QUICK_MODULES if args.quick else MODULES
    scratch = args.scratch.resolve()
    if args.rerun_survivors:
        return rerun_survivors(scratch, modules, QUICK_TESTS if args.quick else TESTS, args)
    if not args.report_only:
        prepare(scratch, modules, QUICK_TESTS if args.quick else TESTS)
        code = run_mutmut(scratch, args.max_children, args.deselect)
        if code != 0:
            print(f"mutmut failed (exit {code}); see {scratch / 'mutmut-run.log'}", file=sys.stderr)
            return 2
    json_path = args.json.resolve() if args.json else None
    results = collect(scratch, modules)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    for f, old in stale_equivalents(scratch):
        print(f"warning: EQUIVALENT names a line no longer in {f}: {old}", file=sys.stderr)
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
