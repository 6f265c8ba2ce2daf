"""The grammar of `pixelgov`'s command line for the CLI fuzz test (`test_fuzz_cli.py`).

Every command is described by its positional arguments and options; each value is drawn
from a list of valid values (so commands get deep: real agents, rules and transactions of
the seeded ledger) mixed with hostile ones: empty, huge, negative, non-finite, unicode,
control characters, surrogate-escaped (non-UTF-8) text, very long strings, and paths to
directories, binary files, 100k-deep JSON and missing files.

An `Example` carries the argv and what the oracles need to know about it (which option
holds the output format, whether `--db` is unusable, whether a name holds a control
character, whether a run's inputs are all sendable, ...). Nothing here talks to the
network: every URL points at 127.0.0.1 (the test's own fake upstream, or a closed port).
"""

# ruff: noqa: RUF005 - value tables are built as `hostile + [more]`

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# --- what the oracles need ----------------------------------------------------------------------

SECRET_FAL_KEY = "fzkey-5EcReT-9d1b7c0e44aa"  # printable ASCII: a key the product must accept and never show
SECRET_MARK = "fzmark-PaRaM-5ecret-77"  # put into secret-looking request fields: must never be stored
URL_PASSWORD = "fzpass-UrL-5ecret-31"  # user:password@ in an upstream or database URL: must never be shown
SECRETS = (SECRET_FAL_KEY, SECRET_MARK, URL_PASSWORD)

#: Commands that never write to the ledger, whatever their exit code (SPEC §5: price has no
#: ledger access, check writes nothing, run --dry-run = check; listings and shows only read).
READ_ONLY = {
    ("models",),
    ("price",),
    ("check",),
    ("tx", "list"),
    ("tx", "show"),
    ("agents", "list"),
    ("agents", "show"),
    ("rules", "list"),
    ("rules", "show"),
    ("alerts", "list"),
    ("audit",),
    ("db", "current"),
    ("report", "summary"),
    ("report", "spend"),
    ("report", "leaderboard"),
    ("report", "chart"),
    ("report", "statement"),
    ("report", "export"),
}

#: Commands that do not need the database at all.
NO_DB = {("models",), ("price",)}

#: Where a denial (exit 3) is a legitimate answer.
MAY_DENY = {("check",), ("authorize",), ("run",)}

#: Every option name the grammar knows: no generated value may equal one (or `NAME=...`),
#: so the oracles know exactly which tokens click parses as which option.
OPTION_NAMES = {
    "--db",
    "--format",
    "--help",
    "-h",
    "--version",
    "--agent",
    "--prompt",
    "--image-size",
    "--num-images",
    "--steps",
    "--guidance",
    "--seed",
    "--output-format",
    "--image-url",
    "--strength",
    "--scale",
    "--input-size",
    "--params",
    "--idempotency-key",
    "--out",
    "--dry-run",
    "--timeout",
    "--upstream-url",
    "--status",
    "--since",
    "--until",
    "--limit",
    "--actual",
    "--response",
    "--reason",
    "--older-than",
    "--kind",
    "--note",
    "--description",
    "--no-key",
    "--name",
    "--type",
    "--period",
    "--window",
    "--models",
    "--model",
    "--operation",
    "--action",
    "--alert-at",
    "--disable",
    "--enable",
    "--entity",
    "--by",
    "--month",
    "--focus",
    "--png",
    "--svg",
    "--csv",
    "--top",
    "--width",
    "--height",
    "--",
}


def is_option_like(token: str) -> bool:
    return token in OPTION_NAMES or any(token.startswith(name + "=") for name in OPTION_NAMES)


def has_bad_name_char(text: str) -> bool:
    """A control character (C0, DEL, C1), a line/paragraph separator or an undecodable byte
    (a lone surrogate, as Python decodes non-UTF-8 argv): never part of a valid name."""
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in text)


@dataclass
class Example:
    command: tuple[str, ...]  # the command path, e.g. ("tx", "show")
    argv: list[str]
    env: dict[str, str | None] = field(default_factory=dict)
    fmt: str | None = None  # the --format value click will see (None: not given)
    formats: tuple[str, ...] = ()  # the choices of the command's --format option (introspected)
    db: str = "ledger"  # ledger | bad | neutral | default
    names: list[str] = field(default_factory=list)  # values used as agent/rule names
    params_bad: bool = False  # --params holds NaN/Infinity/overflowing numbers or absurd nesting
    run_ok: bool = True  # run: upstream URL, FAL_KEY, --timeout, --out all usable (a write on failure is documented)
    env_bad: bool = False  # a pixelgov setting in the environment is malformed
    dry_run: bool = False
    help: bool = False  # --help/--version: exit 0 with help text, nothing else applies
    bare_group: bool = False  # a group without a subcommand: click's usage text is the answer
    note: str = ""

    @property
    def json_mode(self) -> bool:
        return self.fmt == "json" and "json" in self.formats

    @property
    def read_only(self) -> bool:
        return self.command in READ_ONLY or self.help or (self.command == ("run",) and self.dry_run)


# --- fixtures the values point at ----------------------------------------------------------------


@dataclass
class Fixtures:
    """Paths, ports and seeded rows made by the test module (`test_fuzz_cli.World`)."""

    root: Path
    ledger_url: str
    upstream: str  # http://127.0.0.1:PORT of the fake upstream (modes by first path segment)
    closed: str  # http://127.0.0.1:PORT where nothing listens
    closed_port: int
    tx_ids: list[int]
    tx_by_status: dict[str, list[int]]  # the seeded transactions by state
    rule_names: list[str]
    rule_ids: list[int]
    files: dict[str, str]  # name -> path
    formats: dict[tuple[str, ...], tuple[str, ...]]  # command path -> its --format choices

    def f(self, name: str) -> str:
        return self.files[name]


# --- hostile values ------------------------------------------------------------------------------

HOSTILE_STR = [
    "",
    " ",
    "\n",
    "x\n",
    "\t",
    "bot\n",
    "bot\r",
    "\x1b[2J\x1b[31mred",
    "a" * 300,
    "a" * 10_000,
    "é",
    "🦊",
    "\u202eevil",
    "\udcff",
    "a\udcffb",
    "\udcc3\udca9",
    "'; DROP TABLE agents;--",
    "%s%n%x",
    "{}",
    "null",
    "-",
    "-1",
    "..",
    "/",
    "\\",
    "*",
    "?",
    "[",
    "\x7f",
    "\u2028",
    "\u0085",
    "ﬁ",
    "İ",
    "０",
]
HOSTILE_NUM = [
    "",
    " ",
    "0",
    "-0",
    "-1",
    "1e300",
    "-1e300",
    "1e-300",
    str(10**30),
    str(2**63),
    str(2**63 - 1),
    str(2**64),
    str(-(2**63) - 1),
    "nan",
    "NaN",
    "-nan",
    "snan",
    "inf",
    "-inf",
    "Infinity",
    "0x10",
    "1_000",
    " 2 ",
    "2\n",
    "٣",
    "１",
    "1.5",
    "1e3",
    "1e400",
    "9" * 400,
    "9" * 5000,
    "0.0000000001",
    "1,5",
    "$1",
    "abc",
    "\udcff",
    "0." + "0" * 40 + "1",
    "1E+999999999",
    "-0.0",
    "+1",
    "1e-9",
]
HOSTILE_TX_IDS = [
    "0",
    "-1",
    "999999",
    str(2**63),
    str(2**63 - 1),
    str(2**64),
    "1e3",
    "abc",
    "",
    " 1",
    "1\n",
    "１",
    "٣",
    "0x1",
    "+1",
    "9" * 5000,
    "\udcff",
    "1.0",
]

# Any text (no NUL: a real argv cannot hold one), and undecodable bytes as Python decodes argv.
_any_char = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
any_text = st.one_of(
    st.text(_any_char, max_size=24),
    st.binary(min_size=1, max_size=10).map(lambda b: b.decode("utf-8", "surrogateescape").replace("\x00", "")),
)


def mix(
    valid: list[str] | st.SearchStrategy[str], hostile: list[str], *, p: float = 0.5, text: bool = True
) -> st.SearchStrategy[str]:
    """A valid value, or with probability `p` a hostile one (listed, or random text)."""
    valid_st = valid if isinstance(valid, st.SearchStrategy) else st.sampled_from(valid)
    hostile_st = (
        st.one_of(st.sampled_from(hostile), st.sampled_from(hostile), any_text) if text else st.sampled_from(hostile)
    )
    pct = round(p * 100)
    return (
        st.integers(0, 99)
        .flatmap(lambda n: hostile_st if n < pct else valid_st)
        .filter(lambda s: not is_option_like(s))
    )


#: Per example, how hostile its values are: most examples carry one or two hostile values among
#: valid ones (so commands get deep), some are all valid, some all hostile.
HOSTILITY = [0.0, 0.05, 0.1, 0.15, 0.25, 0.4, 0.7]


# --- the grammar ---------------------------------------------------------------------------------

ENDPOINTS = [
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
    "fal-ai/flux-pro",
    "fal-ai/stable-diffusion-xl",
    "fal-ai/fast-sdxl",
    "fal-ai/flux/dev/image-to-image",
    "fal-ai/topaz/upscale/image",
]
HOSTILE_ENDPOINTS = HOSTILE_STR + [
    "fal-ai/flux/dev\n",
    "fal-ai/flux/dev/",
    "FAL-AI/FLUX/DEV",
    "fal-ai/flux/dev/image-to-image/image-to-image",
    "fal-ai/nope",
    "https://fal.run/fal-ai/flux/dev",
    "../../etc/passwd",
    "fal-ai/flux/dev?x=1",
    "fal-ai/topaz/upscale/image/image-to-image",
    "fal-ai/flux/dev\udcff",
    " fal-ai/flux/dev",
]
AGENTS = ["bot", "bot", "paused-bot", "other", "fresh-agent", "a.b@c/d:e"]
HOSTILE_NAMES = HOSTILE_STR + [
    "bot\n",
    "BOT",
    " bot",
    "bot ",
    "a" * 200,
    "a" * 201,
    ".hidden",
    "bot\udcff",
    "bot\t",
    "b\u200bot",
    "bot\x1b[0m",
]
SIZES = [
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
    "1280x720",
    "512x512",
    "14142x1",
]
HOSTILE_SIZES = HOSTILE_STR + [
    "0x0",
    "0x768",
    "-1x-1",
    "1x0",
    "14143x1",
    "100000x100000",
    f"{10**30}x1",
    f"{2**63}x{2**63}",
    "1e3x1e3",
    "nanxnan",
    "1024X768",
    "1024 x 768",
    "1024x768\n",
    "１０２４x７６８",
    "x",
    "1024x",
    "x768",
    "1024x768x2",
    "SQUARE_HD",
    "square_hd\n",
]
USD = ["0.01", "0.05", "1", "0.002", "0", "0.000000001", "5", "0.0118"]
NEG_USD = ["-0.002", "-0.001", "-1000", "-0.000000001"]
PERIODS = ["hour", "day", "week", "month", "total", "minute"]
WINDOWS = ["24h", "7d", "10m", "1h", "366d", "1w"]
HOSTILE_WINDOWS = HOSTILE_NUM + [
    "0h",
    "-1h",
    "1e300h",
    "9" * 30 + "d",
    "59s",
    "367d",
    "1s",
    "h",
    "24 h",
    "24H",
    "24h\n",
    "٢٤h",
    "1y",
]
TIMES = ["24h", "7d", "30m", "1w", "2026-11-25", "2026-11-25T10:00Z", "2026-01-01T00:00:00+02:00"]
HOSTILE_TIMES = HOSTILE_STR + [
    "99999999999d",
    "9" * 30 + "h",
    "0m",
    "-1d",
    "9999-12-31",
    "0001-01-01",
    "2026-02-30",
    "2026-11-25T25:00",
    "yesterday",
    "1e300h",
    "24h\n",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2026-11-25T10:00+99:00",
]
STATUSES = ["pending", "completed", "failed", "voided", "expired", "unknown", "denied"]
RULE_TYPES = ["spend-limit", "request-cap", "rate-limit", "model-allowlist"]
GLOBS = ["fal-ai/flux/*", "fal-ai/*", "*", "fal-ai/flux-pro*", "fal-ai/topaz/*"]
HOSTILE_GLOBS = HOSTILE_STR + ["", ",", ",,", "[", "[!]", "**/**", "a" * 500, "fal-ai/flux/*\n"]
IDEMPOTENCY = ["job-1", "job-2", "k", "fresh-key"]
HOSTILE_KEYS = HOSTILE_STR + ["a" * 200, "a" * 201, "job-1\n", "JOB-1"]


def _params_values(fx: Fixtures) -> tuple[list[str], list[str]]:
    """(valid, hostile) values of --params; hostile ones are tagged by `params_is_bad`."""
    valid = [
        "{}",
        '{"prompt": "a fox"}',
        '{"prompt": "a fox", "image_size": "square_hd", "num_images": 2}',
        '{"image_size": {"width": 1280, "height": 720}}',
        '{"prompt": "x", "seed": 7, "output_format": "png"}',
        f"@{fx.f('params_ok')}",
        '{"prompt": "x", "unknown_field": [1, {"a": null}]}',
        '{"input_size": "1024x768", "scale": 4}',
        '{"image_url": "' + fx.f("png") + '", "scale": 2}',
    ]
    hostile = [
        "",
        "{",
        "[]",
        "null",
        '"str"',
        "1",
        "{}\n{}",
        '{"prompt": "x", "extra": NaN}',
        '{"num_images": Infinity}',
        '{"num_images": 1e400}',
        '{"guidance_scale": -Infinity}',
        '{"image_size": {"width": 1e300, "height": 1}}',
        '{"image_size": {"width": ' + str(10**30) + ', "height": 1}}',
        '{"image_size": {"width": -1, "height": 5}}',
        '{"image_size": {"width": 1024.5, "height": 768}}',
        '{"image_size": {"width": true, "height": 768}}',
        '{"seed": ' + str(2**64) + "}",
        '{"num_images": true}',
        '{"num_images": "2"}',
        '{"num_images": 2.0}',
        '{"prompt": "\\udcff"}',
        '{"prompt": "\\ud800"}',
        '{"prompt": "\\u0000"}',
        '{"prompt": ""}',
        '{"prompt": "' + "p" * 100_000 + '"}',
        '{"prompt": "x", "prompt": "y"}',
        '{"image_size": "square_hd", "width": 99999}',
        '{"scale": 3}',
        '{"scale": 1e309}',
        '{"input_size": {"width": 1e9, "height": 1e9}}',
        '{"image_url": "/"}',
        "[" * 50_000 + "]" * 50_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        # secret-looking fields: must never be stored (SPEC §4: secrets never stored)
        '{"prompt": "x", "password": "' + SECRET_MARK + '"}',
        '{"prompt": "x", "passwd": "' + SECRET_MARK + '"}',
        '{"prompt": "x", "auth": "' + SECRET_MARK + '"}',
        '{"prompt": "x", "cookie": "' + SECRET_MARK + '"}',
        '{"prompt": "x", "headers": {"Cookie": "' + SECRET_MARK + '"}}',
        '{"prompt": "x", "Authorization": "Key ' + SECRET_MARK + '"}',
        '{"prompt": "x", "nested": {"api_key": "' + SECRET_MARK + '"}}',
        '{"prompt": "x", "fal_key": "' + SECRET_MARK + '"}',
        '{"prompt": "x", "token": "' + SECRET_MARK + '"}',
        f"@{fx.f('binary')}",
        f"@{fx.f('dir')}",
        f"@{fx.f('deep')}",
        f"@{fx.f('deep_obj')}",
        f"@{fx.f('nan_json')}",
        f"@{fx.f('missing')}",
        f"@{fx.f('empty')}",
        f"@{fx.f('utf16')}",
        f"@{fx.f('latin1')}",
        f"@{fx.f('params_ok')}\n",
        "@",
        "@/dev/null",
        f"@{fx.f('under_file')}",
    ]
    return valid, hostile


def params_is_bad(value: str, fx: Fixtures) -> bool:
    """Input the issue requires refused before anything is written: non-finite or overflowing
    numbers, lone surrogates, absurd nesting (inline or in the file)."""
    text = value
    if value.startswith("@"):
        path = value[1:]
        if path in (fx.f("deep"), fx.f("deep_obj"), fx.f("nan_json")):
            return True
        return False
    markers = ("NaN", "Infinity", "1e400", "1e309", "[" * 1000, '{"a":{"a":')
    return any(m in text for m in markers)


OptionSpec = tuple[str, st.SearchStrategy[str], int]  # flag, its values, percent of examples that give it


def _request_options(fx: Fixtures, m: Any, *, upscale_probe: bool = True) -> list[OptionSpec]:
    """(flag, values, percent present) for the request options of SPEC §5."""
    image_urls = [fx.f("png"), fx.f("png"), "data:image/png;base64," + fx.f("png_b64"), f"{fx.upstream}/png"]
    hostile_urls = HOSTILE_STR + [
        fx.f("dir"),
        fx.f("binary"),
        fx.f("missing"),
        fx.f("deep"),
        fx.f("png_huge"),
        fx.f("png_zero"),
        fx.f("bmp_negative"),
        fx.f("png_truncated"),
        "data:,",
        "data:image/png;base64,!!!!",
        "data:image/png,",
        "file:///etc/passwd",
        f"file://{fx.f('png')}",
        f"{fx.upstream}/huge.png",
        f"{fx.upstream}/bin",
        f"{fx.upstream}/404",
        f"{fx.closed}/x.png",
        "http://",
        "http://[::1",
        "ftp://127.0.0.1/x.png",
        "https://127.0.0.1:0/x.png",
        f"{fx.f('png')}\n",
        "~/x.png",
        "/dev/null",
    ]
    opts = [
        ("--prompt", m(["a red fox in the snow", "x", "🦊 in snow"], HOSTILE_STR), 55),
        ("--image-size", m(SIZES, HOSTILE_SIZES), 35),
        ("--num-images", m(["1", "2", "4"], HOSTILE_NUM + ["5"]), 30),
        ("--steps", m(["1", "28", "100"], HOSTILE_NUM + ["101"]), 15),
        ("--guidance", m(["0", "3.5", "20"], HOSTILE_NUM), 15),
        ("--seed", m(["0", "42", str(2**31)], HOSTILE_NUM), 15),
        ("--output-format", m(["jpeg", "png"], HOSTILE_STR + ["JPEG", "gif", "webp"]), 15),
        ("--strength", m(["0", "0.75", "1"], HOSTILE_NUM + ["1.01"]), 15),
        ("--scale", m(["2", "4"], HOSTILE_NUM + ["3", "8"]), 20),
        ("--input-size", m(["1024x768", "512x512", "64x64"], HOSTILE_SIZES), 20),
    ]
    if upscale_probe:
        opts.append(("--image-url", m(image_urls, hostile_urls), 30))
    return opts


@st.composite
def _options(draw: Any, specs: list[tuple[str, st.SearchStrategy[str], int]]) -> list[tuple[str, str]]:
    chosen = []
    for flag, values, percent in specs:
        if draw(st.integers(0, 99)) < percent:
            chosen.append((flag, draw(values)))
    return chosen


@st.composite
def example(draw: Any, fx: Fixtures, command: tuple[str, ...]) -> Example:
    """One argv for `command`: the global --db, the command, its arguments and options (shuffled),
    sometimes junk; plus the environment."""
    ex = Example(command=command, argv=[])
    p = draw(st.sampled_from(HOSTILITY))

    def m(valid: Any, hostile: list[str], *, text: bool = True) -> st.SearchStrategy[str]:
        return mix(valid, hostile, p=p, text=text)

    positionals: list[str] = []
    options: list[tuple[str, str]] = []
    flags: list[str] = []
    valid_params, hostile_params = _params_values(fx)
    # a state first, then one of its transactions: every state is met as often as any other
    by_status = {k: v for k, v in fx.tx_by_status.items() if v} or {"any": fx.tx_ids}
    seeded_tx = st.sampled_from(sorted(by_status)).flatmap(lambda k: st.sampled_from([str(i) for i in by_status[k]]))
    tx_ids = m(seeded_tx, HOSTILE_TX_IDS, text=False)
    rule_refs = m(fx.rule_names + [str(i) for i in fx.rule_ids], HOSTILE_NAMES + HOSTILE_TX_IDS)
    agent = m(AGENTS, HOSTILE_NAMES)
    key = command

    def request(with_agent: bool, *, force_agent: bool = True) -> None:
        positionals.append(draw(m(ENDPOINTS, HOSTILE_ENDPOINTS)))
        if with_agent and (force_agent or draw(st.integers(0, 9)) < 9):
            name = draw(agent)
            options.append(("--agent", name))
            ex.names.append(name)
        opts = _request_options(fx, m)
        if key in (("authorize",), ("run",)):  # a prompt is what a runnable request most needs
            opts[0] = (opts[0][0], opts[0][1], 85)
        options.extend(draw(_options(opts)))
        if draw(st.integers(0, 99)) < 30:
            params = draw(m(valid_params, hostile_params, text=False))
            options.append(("--params", params))
            ex.params_bad = params_is_bad(params, fx)

    if key == ("price",):
        request(False)
    elif key == ("check",):
        request(True)
    elif key == ("authorize",):
        request(True)
        if draw(st.integers(0, 9)) < 3:
            options.append(("--idempotency-key", draw(m(IDEMPOTENCY, HOSTILE_KEYS))))
    elif key == ("run",):
        request(True)
        ex.dry_run = draw(st.integers(0, 9)) < 4
        if ex.dry_run:
            flags.append("--dry-run")
        else:
            _run_options(draw, fx, ex, options, p)
        if draw(st.integers(0, 9)) < 2:
            options.append(("--idempotency-key", draw(m(IDEMPOTENCY, HOSTILE_KEYS))))
    elif key == ("models",):
        pass
    elif key == ("tx", "list"):
        for flag, values, pct in [
            ("--agent", agent, 40),
            ("--status", m(STATUSES, HOSTILE_STR + ["PENDING", "pending\n"]), 40),
            ("--since", m(TIMES, HOSTILE_TIMES), 30),
            ("--until", m(TIMES, HOSTILE_TIMES), 30),
            ("--limit", m(["1", "10", "100000"], HOSTILE_NUM + ["100001"]), 25),
        ]:
            if draw(st.integers(0, 99)) < pct:
                options.append((flag, draw(values)))
    elif key == ("tx", "show"):
        positionals.append(draw(tx_ids))
    elif key == ("tx", "complete"):
        positionals.append(draw(tx_ids))
        choice = draw(st.integers(0, 9))
        responses = [fx.f("response_ok"), fx.f("response_ok"), fx.f("response_nosizes")]
        hostile_responses = [
            fx.f(n)
            for n in (
                "response_huge",
                "response_nan",
                "response_negative",
                "response_float",
                "response_list",
                "deep",
                "deep_obj",
                "binary",
                "dir",
                "missing",
                "empty",
                "utf16",
                "response_str_sizes",
                "response_bool_sizes",
            )
        ] + ["", "-", "/dev/null"]
        if choice < 4:
            options.append(("--actual", draw(m(USD, HOSTILE_NUM + NEG_USD))))
        elif choice < 8:
            options.append(("--response", draw(m(responses, hostile_responses, text=False))))
        elif choice < 9:
            options.append(("--actual", draw(m(USD, HOSTILE_NUM))))
            options.append(("--response", fx.f("response_ok")))
    elif key == ("tx", "void"):
        positionals.append(draw(tx_ids))
        if draw(st.booleans()):
            options.append(("--reason", draw(m(["never sent", "duplicate"], HOSTILE_STR))))
    elif key == ("tx", "expire"):
        if draw(st.integers(0, 9)) < 8:
            options.append(("--older-than", draw(m(["60", "86400", "3600.5"], HOSTILE_NUM + ["1e300", "1e20"]))))
    elif key == ("tx", "add-cost"):
        positionals.append(draw(tx_ids))
        positionals.append(draw(m(NEG_USD + USD, HOSTILE_NUM)))
        if draw(st.booleans()):
            options.append(("--note", draw(m(["FAL credit", "refund"], HOSTILE_STR))))
        if draw(st.integers(0, 9)) < 2:
            options.append(("--kind", draw(m(["adjustment"], ["estimate", "actual", "", "ADJUSTMENT"]))))
    elif key == ("tx", "add-fact"):
        positionals.append(draw(tx_ids))
        positionals.append(
            draw(
                st.one_of(
                    st.sampled_from(["reviewer=alice", "ticket=42", "note=a=b", "k="]),
                    st.builds(
                        lambda k, v: f"{k}={v}",
                        st.sampled_from(
                            ["reviewer", "x", "", " ", "k" * 101, "é", "a\nb", "\udcff", "=", "latency_ms"]
                        ),
                        m(["alice", "1"], HOSTILE_STR),
                    ),
                    st.sampled_from(HOSTILE_STR),
                ).filter(lambda s: not is_option_like(s))
            )
        )
    elif key == ("agents", "create"):
        name = draw(m(["fresh-agent", "bot", "new.agent@team/x:1"], HOSTILE_NAMES))
        positionals.append(name)
        ex.names.append(name)
        if draw(st.booleans()):
            options.append(("--description", draw(m(["social images", ""], HOSTILE_STR))))
        if draw(st.integers(0, 9)) < 3:
            flags.append("--no-key")
    elif key in (("agents", "show"), ("agents", "rotate-key")):
        name = draw(agent)
        positionals.append(name)
        ex.names.append(name)
    elif key == ("agents", "update"):
        name = draw(agent)
        positionals.append(name)
        ex.names.append(name)
        if draw(st.integers(0, 9)) < 7:
            options.append(("--status", draw(m(["active", "paused"], HOSTILE_STR + ["PAUSED", "deleted"]))))
        if draw(st.integers(0, 9)) < 4:
            options.append(("--description", draw(m(["x", ""], HOSTILE_STR))))
    elif key in (("rules", "create"), ("rules", "update")):
        if key == ("rules", "update"):
            ref = draw(rule_refs)
            positionals.append(ref)
            ex.names.append(ref)
        rtype = draw(m(RULE_TYPES, HOSTILE_STR + ["SPEND-LIMIT", "spend_limit"]))
        specs: list[tuple[str, st.SearchStrategy[str], int]] = [
            ("--name", m(["fuzz-rule", "cap", "daily", "new.rule"], HOSTILE_NAMES), 90 if key[1] == "create" else 30),
            ("--type", st.just(rtype), 90 if key[1] == "create" else 15),
            ("--limit", m(USD + ["10", "60", "1000"], HOSTILE_NUM + NEG_USD), 70),
            ("--period", m(PERIODS, HOSTILE_STR + ["year", "Day"]), 35),
            ("--window", m(WINDOWS, HOSTILE_WINDOWS), 25),
            ("--models", m(GLOBS + ["fal-ai/flux/*,fal-ai/topaz/*"], HOSTILE_GLOBS), 30),
            ("--agent", agent, 35),
            ("--model", m(GLOBS, HOSTILE_GLOBS), 20),
            ("--operation", m(["generate", "transform", "upscale"], HOSTILE_STR + ["GENERATE"]), 20),
            ("--action", m(["deny", "alert"], HOSTILE_STR + ["DENY", "warn"]), 25),
            ("--alert-at", m(["80", "1", "100", "50%"], HOSTILE_NUM + ["101", "0", "80%%"]), 20),
        ]
        for flag, value in draw(_options(specs)):
            options.append((flag, value))
            if flag in ("--name", "--agent"):
                ex.names.append(value)
        if key == ("rules", "create"):
            if draw(st.integers(0, 9)) < 2:
                flags.append("--disable")
        elif draw(st.integers(0, 9)) < 3:
            flags.append(draw(st.sampled_from(["--enable", "--disable"])))
    elif key in (("rules", "show"), ("rules", "delete")):
        ref = draw(rule_refs)
        positionals.append(ref)
        ex.names.append(ref)
    elif key in (("rules", "list"), ("agents", "list")):
        pass
    elif key == ("alerts", "list") or key == ("audit",):
        if draw(st.booleans()):
            options.append(("--limit", draw(m(["1", "10", "100000"], HOSTILE_NUM + ["100001"]))))
        if key == ("audit",) and draw(st.booleans()):
            options.append(("--entity", draw(m(["agent", "rule"], HOSTILE_STR + ["transaction"]))))
    elif key == ("db", "current"):
        pass
    elif key == ("db", "upgrade"):
        if draw(st.integers(0, 9)) < 7:
            positionals.append(
                draw(
                    m(
                        ["head", "0001_ledger", "heads"],
                        [
                            "nope",
                            "",
                            "base",
                            "+1",
                            "ffff",
                            "head\n",
                            "0001",
                            "head+1",
                            "\udcff",
                            "a" * 300,
                            "heads@x",
                            "0001_ledger@head",
                        ],
                    )
                )
            )
    elif key == ("db", "downgrade"):
        # Only revisions that cannot exist: a real downgrade would drop the fuzz ledger's tables.
        positionals.append(
            draw(
                st.sampled_from(
                    ["nope", "", "ffff", "0001_ledger\n", "head+1", "\udcff", "a" * 300, "0002_future", "base\n", "+1"]
                )
            )
        )
    elif key[0] == "report":
        _report_options(draw, fx, ex, options, flags, positionals, m)
    elif key == ("junk",):
        return _junk(draw, fx)
    else:  # pragma: no cover - a command the grammar forgot
        raise AssertionError(f"no grammar for {key}")

    # The output format: usually given, sometimes hostile.
    formats = fx.formats.get(key, ())
    ex.formats = formats
    if formats and draw(st.integers(0, 9)) < 7:
        fmt = draw(
            mix(
                list(formats) + (["json"] if "json" in formats else []),
                ["xml", "", "JSON", "json\n", "yaml"],
                p=p / 3,
                text=False,
            )
        )
        options.append(("--format", fmt))
        ex.fmt = fmt
    # Rarely: --help, or a junk token that click must refuse as bad usage.
    tail: list[str] = []
    if draw(st.integers(0, 99)) < 3:
        tail.append(draw(st.sampled_from(["--help", "-h"])))
        ex.help = True
    if draw(st.integers(0, 99)) < round(8 * p):
        tail.append(draw(st.sampled_from(["--bogus", "--bogus=1", "extra-arg", "-z", "--agentx"])))

    items = [[flag, value] for flag, value in options] + [[f] for f in flags]
    items = draw(st.permutations(items)) if items else items
    args = [tok for item in items for tok in item]
    rest = (positionals + args) if draw(st.integers(0, 9)) < 7 else (args + positionals)
    db_args = _db_choice(draw, fx, ex, p)
    ex.argv = db_args + list(key) + rest + tail
    ex.env = _env_choice(draw, fx, ex, p)
    return ex


def _run_options(draw: Any, fx: Fixtures, ex: Example, options: list[tuple[str, str]], p: float) -> None:
    """A real run: the upstream is always 127.0.0.1 (the fake, a closed port) or malformed."""
    # (a closed port costs the product's connect retries, ~2 s: PIXELGOV_UPSTREAM_URL, used when no
    # --upstream-url is given, is one; the other is the URL with a password)
    good = [
        f"{fx.upstream}/ok",
        f"{fx.upstream}/ok",
        f"{fx.upstream}/500",
        f"{fx.upstream}/drop",
        f"{fx.upstream}/echo",
        f"{fx.upstream}/huge",
        f"{fx.upstream}/nan",
        f"{fx.upstream}/notjson",
        f"{fx.upstream}/empty",
        f"{fx.upstream}/500",
        f"http://fzuser:{URL_PASSWORD}@127.0.0.1:{fx.closed_port}",
    ]
    malformed = [
        "http://",
        "http://[::1",
        "ftp://127.0.0.1/",
        "http://127.0.0.1:99999",
        "not a url",
        "http:///fal",
        f"{fx.upstream}/ok\n",
        "http://127.0.0.1:abc",
        "https://",
        "http://\udcff",
        "//127.0.0.1",
    ]
    if draw(st.integers(0, 9)) < 9:
        url = draw(mix(good, malformed, p=p, text=False))
        options.append(("--upstream-url", url))
        if url in malformed:
            ex.run_ok = False
    # else: PIXELGOV_UPSTREAM_URL from the environment (always the closed port or the fake)
    if draw(st.integers(0, 9)) < 3:
        timeout = draw(
            st.sampled_from(
                ["0.5", "5", "30", "0", "-1", "nan", "inf", "-inf", "1e300", str(10**30), "", "abc", "1e-320"]
            )
        )
        options.append(("--timeout", timeout))
        if timeout not in ("0.5", "5", "30"):
            ex.run_ok = False
    if draw(st.integers(0, 9)) < 3:
        out = draw(
            st.sampled_from(
                [
                    fx.f("out_dir"),
                    fx.f("out_new"),
                    fx.f("binary"),
                    fx.f("under_file"),
                    "/proc/pixelgov-fuzz/out",
                    fx.f("missing") + "/deeper/still",
                ]
            )
        )
        options.append(("--out", out))
        if out in (fx.f("binary"), fx.f("under_file"), "/proc/pixelgov-fuzz/out"):
            ex.run_ok = False


def _report_options(
    draw: Any,
    fx: Fixtures,
    ex: Example,
    options: list[tuple[str, str]],
    flags: list[str],
    positionals: list[str],
    m: Any,
) -> None:
    """`report summary/spend/leaderboard/chart/statement/export` (SPEC §5, the README's options)."""
    sub = ex.command[1]
    agent = m(AGENTS, HOSTILE_NAMES)
    model = m(["fal-ai/flux/dev", "fal-ai/fast-sdxl", "fal-ai/flux-pro"], HOSTILE_ENDPOINTS)
    window: list[OptionSpec] = [("--since", m(TIMES, HOSTILE_TIMES), 40), ("--until", m(TIMES, HOSTILE_TIMES), 25)]
    files = m(
        [fx.f("out_dir") + "/report.out", fx.f("out_new") + "/report.out"],
        [fx.f("dir"), fx.f("under_file"), fx.f("regular_file"), "/proc/pixelgov-fuzz/r.out", "", "-"],
        text=False,
    )
    sizes = m(["1000", "640", "200"], ["0", "-1", "1", "abc", "", str(2**31), str(2**63), "1e3", "20000"], text=False)
    specs: list[OptionSpec] = []
    if sub == "summary":
        specs = [
            *window,
            (
                "--period",
                m(
                    ["day", "week", "month", "2026-11", "2026-01"],
                    HOSTILE_TIMES + ["2026-13", "0000-00", "year", "99999-01"],
                ),
                40,
            ),
            ("--agent", agent, 25),
            ("--model", model, 20),
        ]
    elif sub == "spend":
        specs = [
            (
                "--by",
                m(
                    ["agent", "model", "day", "agent,model,day", "operation,week", "month"],
                    HOSTILE_STR + ["agent,,day", "nope", "agent,agent", "day,week", ",", "agent," * 50],
                ),
                60,
            ),
            *window,
            ("--agent", agent, 20),
            ("--model", model, 15),
            ("--operation", m(["generate", "upscale"], HOSTILE_STR), 15),
            ("--status", m(STATUSES, HOSTILE_STR + ["PENDING"]), 15),
        ]
    elif sub == "leaderboard":
        specs = [
            ("--by", m(["agent", "model", "rule"], HOSTILE_STR), 50),
            ("--top", m(["1", "10", "1000"], HOSTILE_NUM + ["1001"]), 40),
            *window,
        ]
    elif sub == "chart":
        specs = [
            ("--by", m(["day", "week", "month"], HOSTILE_STR), 40),
            *window,
            ("--agent", agent, 15),
            ("--model", model, 15),
            ("--png", files, 25),
            ("--svg", files, 25),
        ]
        # never both sides huge: a hostile size must not take the test machine's memory with it
        if draw(st.booleans()):
            specs.append(("--width", sizes, 40))
        else:
            specs.append(("--height", sizes, 40))
    elif sub == "statement":
        specs = [
            (
                "--month",
                m(
                    ["2026-11", "2026-01", "2025-12"],
                    HOSTILE_TIMES + ["2026-13", "0000-00", "2026-1", "99999-01", "2026-11\n"],
                ),
                92,
            ),
            ("--agent", agent, 30),
        ]
    elif sub == "export":
        positionals.append(draw(files))
        if draw(st.integers(0, 9)) < 6:
            flags.append("--focus")
        specs = [*window]
    for flag, value in draw(_options(specs)):
        options.append((flag, value))


def _junk(draw: Any, fx: Fixtures) -> Example:
    """Top-level argv: no command, unknown commands, --version, global junk."""
    argv = draw(
        st.sampled_from(
            [
                [],
                ["--version"],
                ["--help"],
                ["nope"],
                ["tx"],
                ["agents"],
                ["rules"],
                ["db"],
                ["tx", "nope"],
                ["--db"],
                ["--db", fx.ledger_url],
                ["--db", fx.ledger_url, "--db", "mysql://x", "tx", "list"],
                ["--bogus"],
                ["\udcff"],
                ["TX", "LIST"],
                ["tx", "list", "--", "--format", "json"],
                ["-"],
                [""],
                ["--db=" + fx.ledger_url, "tx", "list"],
                ["models", "extra"],
                ["tx", "show"],
                ["tx", "add-cost", "1"],
            ]
        )
    )
    ex = Example(command=("junk",), argv=list(argv))
    ex.help = "--help" in argv or "--version" in argv
    ex.bare_group = argv in ([], ["tx"], ["agents"], ["rules"], ["db"])
    ex.env = _env_choice(draw, fx, ex)
    return ex


BAD_DBS = [
    "mysql://x",
    "postgresql+psycopg2://x",
    "",
    "not a url",
    "sqlite",
    "postgresql+psycopg://127.0.0.1:{closed}/nope",
    "postgresql+psycopg://fz:" + URL_PASSWORD + "@127.0.0.1:{closed}/nope",
    "sqlite:////proc/pixelgov-fuzz/x.db",
]


def _db_choice(draw: Any, fx: Fixtures, ex: Example, p: float) -> list[str]:
    n = draw(st.integers(0, 99))
    if n < 100 - round(30 * p) - 2:
        ex.db = "ledger"
        return ["--db", fx.ledger_url]
    if n < 98 - round(5 * p):
        ex.db = "bad"
        value = draw(
            st.sampled_from(
                BAD_DBS
                + [
                    f"sqlite:///{fx.f('under_file')}",
                    f"sqlite:///{fx.f('dir')}",
                    f"sqlite:///{fx.f('binary')}",
                    f"sqlite:///{fx.f('deep')}",
                ]
            )
        ).replace("{closed}", str(fx.closed_port))
        return ["--db", value]
    if n < 98:
        # a valid URL of a database without the pixelgov schema (or undecodable): any answer but a traceback
        ex.db = "neutral"
        return [
            "--db",
            draw(
                st.sampled_from(
                    [
                        f"sqlite:///{fx.root}/fresh.db",
                        "sqlite://",
                        "sqlite:///",
                        f"sqlite:///{fx.root}/\udcff.db",
                        f"sqlite:///{fx.ledger_url.split(':///', 1)[1]}?mode=ro",
                    ]
                )
            ),
        ]
    ex.db = "default"  # no --db: the default SQLite file in the (temporary) user data dir
    return []


FAL_KEYS_BAD = ["", " ", "key with space", "ké", "key\nX-Injected: 1", "\udcff"]


def _env_choice(draw: Any, fx: Fixtures, ex: Example, p: float = 0.3) -> dict[str, str | None]:
    """The environment: the FAL key (the test's secret, absent or unsendable), and rarely a
    hostile value in one of pixelgov's settings (SPEC §8)."""
    env: dict[str, str | None] = {}
    k = draw(st.integers(0, 99))
    if k < 90 - round(60 * p):
        env["FAL_KEY"] = SECRET_FAL_KEY
    elif k < 95 - round(30 * p):
        env["FAL_KEY"] = None
        ex.run_ok = False
    else:
        env["FAL_KEY"] = draw(st.sampled_from(FAL_KEYS_BAD))
        ex.run_ok = False
    if draw(st.integers(0, 99)) < round(25 * p):
        var, value = draw(
            st.sampled_from(
                [
                    ("PIXELGOV_HOLD_TTL", v)
                    for v in ("nan", "inf", "-inf", "abc", "-1", "0", "1e300", " ", "9" * 400, "٣")
                ]
                + [("PIXELGOV_DB_TIMEOUT", v) for v in ("nan", "inf", "abc", "-1", "1e300", "9" * 400)]
                + [("PIXELGOV_UPSTREAM_TIMEOUT", v) for v in ("nan", "inf", "abc", "-1", "0", "1e300")]
                + [("PIXELGOV_AUTO_CREATE_AGENTS", v) for v in ("false", "0", "maybe", "", "FALSE")]
                + [
                    ("PIXELGOV_PRICE_BOOK", fx.f(n))
                    for n in (
                        "binary",
                        "dir",
                        "deep",
                        "missing",
                        "empty",
                        "nan_json",
                        "book_bad_rate",
                        "book_huge_rate",
                    )
                ]
                + [
                    ("PIXELGOV_UPSTREAM_URL", v)
                    for v in ("http://", "ftp://127.0.0.1/", "http://[::1", f"{fx.upstream}/echo")
                ]
                + [("PIXELGOV_DATABASE_URL", v) for v in ("mysql://x", "not a url", f"sqlite:///{fx.f('under_file')}")]
            )
        )
        env[var] = value
        ex.note = f"{var}={value!r}"
        overridden = (
            (var == "PIXELGOV_UPSTREAM_URL" and "--upstream-url" in ex.argv)
            or (var == "PIXELGOV_UPSTREAM_TIMEOUT" and "--timeout" in ex.argv)
            or (var == "PIXELGOV_DATABASE_URL" and ex.db != "default")
        )
        valid = (var == "PIXELGOV_AUTO_CREATE_AGENTS" and value in ("false", "0", "", "FALSE")) or (
            var == "PIXELGOV_UPSTREAM_URL" and value.endswith("/echo")
        )
        if not overridden and not valid:
            ex.env_bad = True
    return env


COMMANDS: list[tuple[str, ...]] = [
    ("models",),
    ("price",),
    ("check",),
    ("authorize",),
    ("run",),
    ("tx", "list"),
    ("tx", "show"),
    ("tx", "complete"),
    ("tx", "void"),
    ("tx", "expire"),
    ("tx", "add-cost"),
    ("tx", "add-fact"),
    ("agents", "create"),
    ("agents", "list"),
    ("agents", "show"),
    ("agents", "update"),
    ("agents", "rotate-key"),
    ("rules", "create"),
    ("rules", "list"),
    ("rules", "show"),
    ("rules", "update"),
    ("rules", "delete"),
    ("alerts", "list"),
    ("audit",),
    ("db", "current"),
    ("db", "upgrade"),
    ("db", "downgrade"),
    ("junk",),
]
#: Share of the examples per command (default 1): the commands with the most paths get more.
WEIGHTS: dict[tuple[str, ...], int] = {
    ("run",): 6,
    ("authorize",): 3,
    ("check",): 2,
    ("price",): 2,
    ("tx", "complete"): 2,
    ("tx", "add-cost"): 2,
    ("rules", "create"): 3,
    ("rules", "update"): 3,
    ("agents", "create"): 2,
    ("tx", "list"): 2,
    ("pair",): 2,
}

REPORT_COMMANDS: list[tuple[str, ...]] = [
    ("report", "summary"),
    ("report", "spend"),
    ("report", "leaderboard"),
    ("report", "chart"),
    ("report", "statement"),
    ("report", "export"),
]
