"""Whether two final answers are the same answer: `AnswerMatcher` (string keys, or symmetric math-verify with safe
timeouts, off the main thread in a helper process).

THE RULE for everything this module adds before or around math-verify (keys, base subscripts, numbers side by side,
exact rationals, the relative-tolerance guard, the probe rejection): it may only reject what math-verify would reject,
or fix one of the project's own documented false positives, `OWN_FALSE_POSITIVE_FIXES`. Where math-verify says
"equal" in both directions and the project says "different", `own_false_positive_fix(a, b)` names the documented fix
responsible, and `tests/test_answer_classes.py` checks this class by class. The project may *accept* more than
math-verify only where math-verify is one-sided about a true equality: an inequality against the same interval
(`1 \\le x \\le 3` vs `[1, 3]`), which it accepts only with the inequality as gold unless
`allow_set_relation_comp=True` (see `_one_way`).
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from collections import Counter

from .normalise import normalize_answer

logger = logging.getLogger("cat_trl.answers")

MATCH_MODES = ("string", "equivalent")

# --------------------------------------------------------------------------------------------------------------------
# math-verify equivalence (runs in whichever process owns the main thread doing the check)
# --------------------------------------------------------------------------------------------------------------------

_PLAIN_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


_FRAC_NUMBER_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(\d+)")
#: a numeral written in a base: digits (and, in a base above 10, capital letter digits: `1A_{16}`), optionally
#: parenthesised or with a radix point, with a numeric subscript: `1011_2`, `101_{2}`, `(12)_8`, `-101_2`, and each
#: numeral of `10_2, 11_2`. It stands on its own -- not after a letter, digit, `_`, `^`, `}` or a command -- so index
#: subscripts (`x_1 + x_2`, `F_n`, `a_{n+1}`, `x^2_1`, `\\log_2 8`) are never bases.
_BASE_NUMBER_RE = re.compile(
    r"(?<![0-9A-Za-z_^}\\.])\(?([0-9A-Z]{1,100}(?:\.[0-9A-Z]{1,100})?)\)?_(?:\{\(?(\d{1,2})\)?\}|(\d{1,2}))"
)


def _exact_rational(key: str):
    """The exact value of a normalised key that is a rational literal -- a decimal (`-3.5`), `\\frac{a}{b}` or `a/b`
    with integer parts -- else None. Two rational literals are decided exactly, never by math-verify, whose 6-decimal
    rounding accepts `0.333333` for `\\frac{1}{3}`."""
    from fractions import Fraction

    value = _plain_number(key)
    if value is not None or len(key) > 100:
        return value
    m = _FRAC_NUMBER_RE.fullmatch(key)
    if m is None:
        return None
    try:
        if m.group(2) is not None:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        return Fraction(int(m.group(4)), int(m.group(5)))
    except (ValueError, ZeroDivisionError):
        return None


def _bases(key: str) -> tuple[int, ...]:
    """The bases of the base numerals in a normalised key, in order: `1011_2` -> (2,), `10_2, 11_2` -> (2, 2),
    `1011` / `x_1 + x_2` / `F_n` -> ().

    math-verify drops a base subscript (`10_2` would equal `10`), so two answers whose bases differ are different
    answers; a subscript that is an index (`x_1`, `F_n`, `a_{n+1}`) is no base and is left to math-verify."""
    bases = []
    for m in _BASE_NUMBER_RE.finditer(key):
        digits, base = m.group(1).replace(".", ""), int(m.group(2) or m.group(3))
        if not any(ch.isdigit() for ch in digits):
            continue  # `A_1`, `B_2`: a name with an index
        if not digits.isdigit() and (not 10 < base <= 36 or any(int(ch, 36) >= base for ch in digits)):
            continue  # letters are digits only in a base above 10
        bases.append(base)
    return tuple(bases)


def _numbers_side_by_side(key: str) -> bool:
    """Whether a normalised key holds two numbers next to each other (a key keeps one space only between two digits:
    `\\text{1 2}`, `3 \\quad 4`, `1 000 000`). math-verify's parser makes one number, or a product or sum, of them
    (`\\text{1 2}` = 12, `3 4` = 7, `1 000 000` = 0): a documented false positive. A digit that is a subscript,
    superscript or command argument before the space is no number of its own: `\\log_2 8`, `2^3 4`, `\\frac 1 2`
    are one expression each, left to math-verify. Linear: each space walks back over its own digit run only."""
    pos = key.find(" ")
    while pos != -1:
        i = pos
        while i > 0 and (key[i - 1].isdigit() or key[i - 1] == "."):
            i -= 1
        if i == 0 or not (key[i - 1] in "_^" or key[i - 1].isalpha()):
            return True
        pos = key.find(" ", pos + 1)
    return False


def _plain_number(key: str):
    """The exact value of a normalised key that is a plain decimal number (`12`, `-3.5`), else None.

    Keys over 100 characters are left to the general path: Python refuses int conversion beyond 4300 digits, and a
    degenerate rollout can box a number of any length."""
    from fractions import Fraction

    if len(key) > 100 or not _PLAIN_NUMBER_RE.fullmatch(key):
        return None
    try:
        return Fraction(key)
    except (ValueError, ZeroDivisionError):
        return None


_REL_TOL = 1e-4  # guard against math-verify's absolute 6-decimal rounding equating tiny values (math-verify #14)


@functools.lru_cache(maxsize=1)
def _extraction_config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _alarm_seconds(timeout: float | None) -> int | None:
    # math-verify's timeouts are `signal.alarm(int)`: whole seconds only, and a float would be a TypeError.
    return None if timeout is None else max(1, math.ceil(timeout))


@functools.lru_cache(maxsize=8192)
def _parse(answer: str, seconds: int | None) -> tuple[str, list]:
    """(status, candidates), cached with failures too: a reference shared by a group is parsed (or times out) once."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        parsed = parse("\\boxed{" + answer + "}", _extraction_config(), parsing_timeout=seconds, raise_on_error=True)
    except TimeoutException:
        return "timeout", []
    except Exception:
        return "error", []
    return ("ok", parsed) if parsed else ("unparseable", [])


def _close_enough(x, y, seconds: int | None) -> bool:
    """False when both sides are plain numbers whose relative difference exceeds `_REL_TOL`.

    math-verify compares numbers after rounding to 6 decimals, so `1/2^99` "equals" `1/2^98` (math-verify #14);
    symmetry cannot fix that, a relative check can. Anything that is not a plain number (sets, tuples, symbols), or
    that cannot be evaluated, passes: this only vetoes, it never accepts.
    """
    import sympy
    from math_verify.utils import timeout as mv_timeout

    if not (isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr) and x.is_number and y.is_number):
        return True

    def close() -> bool:
        try:  # doit(): math-verify keeps `10\%` as `10*UnevaluatedExpr(1/100)`, which evalf leaves alone
            xv, yv = x.doit().evalf(30), y.doit().evalf(30)
            scale = max(abs(xv), abs(yv))
            return bool(scale == 0 or abs(xv - yv) <= _REL_TOL * scale)
        except Exception:
            return True

    return mv_timeout(seconds)(close)()


#: reject pairs that certainly differ before math-verify's simplify (`_certainly_differ`; off in benchmarks/run.py)
_PROBE_REJECTION = True
_PROBES = (0.7311, 1.3137)  # arbitrary irrational-looking points: an identity holds at them, a mismatch shows


def _certainly_differ(x, y, guard: bool, seconds: int | None) -> bool:
    """A rejection decided without math-verify's comparison, identical to its outcome: two numbers farther apart than
    `_REL_TOL` (the guard below would veto math-verify's acceptance anyway), or a number against an expression that
    evaluates differently (`_differs_from_number`). Symbolic pairs (expressions in free symbols on both sides) still
    go to math-verify, whose simplification knows more identities than two probe points can prove absent."""
    import sympy

    if guard and isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr) and x.is_number and y.is_number:
        return not _close_enough(x, y, seconds)
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as mv_timeout

    try:  # evalf of a huge product can take seconds: bounded like math-verify's own steps; too slow = undecided
        return mv_timeout(seconds)(_differs_from_number)(x, y)
    except TimeoutException:
        return False


def _differs_from_number(x, y) -> bool:
    """True only when one side is a number and the other an expression in free symbols that takes a *different*
    value at two probe points -- then the two cannot be identically equal, which is what math-verify's symbolic
    check (`simplify(a - b) == 0`, then `equals`) would conclude, much slower (benchmarks/run.py measures it).
    Identities such as `\\sin^2 x + \\cos^2 x` vs `1` agree at the probes and still go to math-verify; anything
    unusual (relations, sets, tuples, non-finite values, evaluation errors) returns False, so this can only skip a
    rejection, never accept."""
    import sympy

    if not (isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr)):
        return False
    if isinstance(x, sympy.Symbol) or isinstance(y, sympy.Symbol):
        return False  # math-verify compares a lone symbol by name (`e` vs E, `\text{(E)}` vs `e`), not by value
    if x.is_number and not y.is_number:
        number, expr = x, y
    elif y.is_number and not x.is_number:
        number, expr = y, x
    else:
        return False
    symbols = sorted(expr.free_symbols, key=str)
    if not symbols:
        return False
    try:
        value = complex(number.evalf(30))
        for point in _PROBES:
            probe = complex(expr.evalf(30, subs={s: point + 0.1 * k for k, s in enumerate(symbols)}))
            if not (math.isfinite(probe.real) and math.isfinite(probe.imag)):
                return False
            if abs(probe - value) <= 1e-6 * max(1.0, abs(value)):
                return False
    except Exception:
        return False
    return True


def _is_inequality(expr) -> bool:
    """An inequality (`x < 3`, `x \\ge 2`, `x \\ne 3`) or a chain of them (`1 \\le x \\le 3` is an `And`), not an
    equation: the relations whose solution set an interval states."""
    import sympy

    if isinstance(expr, sympy.And):
        return bool(expr.args) and all(_is_inequality(arg) for arg in expr.args)
    return isinstance(expr, sympy.core.relational.Relational) and not isinstance(expr, sympy.Eq)


def _is_interval_set(expr) -> bool:
    """An interval or a union of intervals (`[1, 3]`, `(2, \\infty)`, `(0, 9) \\cup (9, 36)`), also stated as
    `x \\in [1, 3]`. Not a finite set: math-verify compares an open interval with a two-element set or tuple as a
    pair (`(-1, 1)` = `\\pm 1`), so an inequality turned into a set must never meet one."""
    import sympy

    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    if isinstance(expr, sympy.Union):
        return bool(expr.args) and all(isinstance(arg, sympy.Interval) for arg in expr.args)
    return isinstance(expr, sympy.Interval)


def _one_way(gold: list, target: list, seconds: int | None, guard: bool) -> bool:
    """math-verify's `verify(gold, target)` pair by pair, so a failing pair cannot hide the others.

    An inequality against an interval is compared as its solution set in both directions: math-verify does that only
    with the inequality as gold (`1 \\le x \\le 3` vs `[1, 3]`) unless `allow_set_relation_comp=True`, which is
    passed only when the target is an inequality (`_is_inequality`) and the gold an interval or a union of intervals
    (`_is_interval_set`), so the symmetric check accepts the pair both ways. It is exact set equality (`1 \\le x \\le
    3` vs `[1, 4]`, `x < 3` vs `(-\\infty, 3]` stay different), never meets a finite set or tuple (math-verify's
    one-way `-1 < x < 1` = `\\pm 1` stays rejected), and changes nothing else: the flag only affects a relation
    against a set."""
    from math_verify import verify

    for g in gold:
        for t in target:
            try:
                as_sets = _is_inequality(t) and _is_interval_set(g)
                if verify(g, t, timeout_seconds=seconds, raise_on_error=True, allow_set_relation_comp=as_sets) and (
                    not guard or _close_enough(g, t, seconds)
                ):
                    return True
            except Exception:
                continue
    return False


def _equivalent(a: str, b: str, timeout: float | None) -> str:
    """Symmetric math-verify check -> "verified" | "rejected" | "timeout" | "error" | "unparseable". Never raises.

    Symmetric because `verify` treats its first argument as gold: one-directional verification is not an
    equivalence relation, and both the CaT reward (reference vs rollout) and clustering need one.
    """
    from math_verify.errors import TimeoutException

    seconds = _alarm_seconds(timeout)
    try:
        (sa, pa), (sb, pb) = _parse(a, seconds), _parse(b, seconds)
        for status in (sa, sb):
            if status != "ok":
                return status
        # Percentages are exempt from the tiny-value guard: math-verify deliberately accepts `10\%` for `10`.
        guard = "%" not in a and "%" not in b
        # Pairs that certainly differ are rejected without math-verify's comparison (its simplify is the slow part).
        exprs_a, exprs_b = ([c for c in p if not isinstance(c, str)] for p in (pa, pb))
        same_text = {c for c in pa if isinstance(c, str)} & {c for c in pb if isinstance(c, str)}
        if (_PROBE_REJECTION and exprs_a and exprs_b and not same_text
                and all(_certainly_differ(x, y, guard, seconds) for x in exprs_a for y in exprs_b)):
            return "rejected"
        verified = _one_way(pa, pb, seconds, guard) and _one_way(pb, pa, seconds, guard)
        return "verified" if verified else "rejected"
    except TimeoutException:  # a BaseException in math-verify: the first timeout ends the check
        return "timeout"
    except Exception:
        return "error"


# --------------------------------------------------------------------------------------------------------------------
# The project's own false-positive fixes (THE RULE in the module docstring)
# --------------------------------------------------------------------------------------------------------------------

#: Every class of pairs on which `AnswerMatcher("equivalent")` says "different" while math-verify alone says "equal" in
#: both directions: name -> (what math-verify gets wrong, example pairs it accepts both ways). Nothing else may be
#: rejected by the project; `own_false_positive_fix` names the class that decides a pair.
OWN_FALSE_POSITIVE_FIXES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "base_subscript": (
        "math-verify drops a base subscript, so a number in one base equals the same digits in another base or in "
        "base 10; only a numeral of digits standing on its own with a numeric subscript is a base (`1011_2`, each of "
        "`10_2, 11_2`); `x_1`, `F_n`, `a_{n+1}` are indices, left to math-verify",
        (("10_2", "10"), ("7_8", "7_9"), ("101_{2}", "101"), ("12_2", "12_{3}"), ("1011_2", "1011"),
         ("12_8", "12_9"), ("12_{8}", "12")),
    ),
    "numbers_side_by_side": (
        "math-verify makes one number, a product or a sum of two numbers next to each other (`\\text{1 2}` = 12, "
        "`3 4` = 7, `1 000 000` = 0); a digit that is a subscript, superscript or command argument (`\\log_2 8`) "
        "is not a number of its own",
        ((r"\text{1 2}", "12"), ("3 4", "7"), (r"3 \quad 4", "7"), ("1 000 000", "0")),
    ),
    "exact_rationals": (
        "math-verify compares numbers rounded to 6 decimals, so `0.333333` equals `\\frac{1}{3}`; two rational "
        "literals are decided by exact arithmetic",
        (("0.333333", r"\frac{1}{3}"), ("0.3333333", "0.33333333"), ("-0.666667", r"-\frac{2}{3}"),
         ("0.0001", "0.0001004")),
    ),
    "relative_tolerance": (
        "math-verify's absolute 6-decimal rounding equates tiny values (math-verify #14): two numbers farther apart "
        "than a relative 1e-4 are different",
        ((r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"), (r"\frac{1}{2004!}", r"\frac{1}{2006!}")),
    ),
}


def _own_rejection(ka: str, kb: str) -> str | None:
    """The documented fix that rejects two (different) normalised keys before any parsing, or None."""
    if _bases(ka) != _bases(kb):
        return "base_subscript"
    if _numbers_side_by_side(ka) or _numbers_side_by_side(kb):
        return "numbers_side_by_side"
    return None


def own_false_positive_fix(a: str, b: str, timeout: float | None = 5.0) -> str | None:
    """The name of the `OWN_FALSE_POSITIVE_FIXES` class by which the `equivalent` matcher rejects `(a, b)` before or
    around math-verify, or None when no such rejection applies (then the matcher's verdict is math-verify's, made
    symmetric). A named fix may also agree with math-verify (`1` vs `2` is decided by exact arithmetic too); it only
    matters where math-verify would say "equal" both ways. For audits and tests (`tests/test_answer_classes.py`);
    never raises and never hangs: the math-verify step runs under its alarms on the main thread and is skipped
    (undecided, None) off it."""
    from math_verify.errors import TimeoutException

    try:
        ka, kb = normalize_answer(a), normalize_answer(b)
        if not ka or not kb or ka == kb:
            return None
        reason = _own_rejection(ka, kb)
        if reason is not None:
            return reason
        percent = "%" in a or "%" in b
        x, y = _exact_rational(ka), _exact_rational(kb)
        if x is not None and y is not None and not percent:
            return "exact_rationals" if x != y else None
        if percent:
            return None
        if timeout is not None and threading.current_thread() is not threading.main_thread():
            return None  # math-verify's alarms only work in the main thread
        seconds = _alarm_seconds(timeout)
        (sa, pa), (sb, pb) = _parse(a, seconds), _parse(b, seconds)
        if sa != "ok" or sb != "ok":
            return None
        from math_verify import verify

        for g, t in [(g, t) for g in pa for t in pb] + [(t, g) for g in pa for t in pb]:
            if verify(g, t, timeout_seconds=seconds) and not _close_enough(g, t, seconds):
                return "relative_tolerance"
    except (Exception, TimeoutException):  # math-verify's TimeoutException is a BaseException: undecided
        return None
    return None


# --------------------------------------------------------------------------------------------------------------------
# Helper process for checks off the main thread
# --------------------------------------------------------------------------------------------------------------------

_WORKER_START_TIMEOUT = 120.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker_deadline(timeout: float) -> float:
    """Hard wall-clock limit for one check in the worker. The worker's own alarms normally answer well before this;
    it only catches hangs inside C code (big-integer arithmetic) that a signal cannot interrupt."""
    return 3 * _alarm_seconds(timeout) + 2.0


@functools.lru_cache(maxsize=1)
def _warmed_up() -> bool:
    """One untimed check, once per process: math-verify builds its LaTeX grammar and sympy its caches on first use
    (seconds on a loaded machine), which must not be charged to the first timed check -- it would time out and count
    a true equality as different."""
    _equivalent(r"\frac{1}{2}", "0.5", None)
    return True


def _worker_main(fd: int) -> None:
    """Helper-process loop: answer (a, b, timeout) requests on the inherited socket `fd` with `_equivalent` statuses.

    Runs in the helper's main thread, so math-verify's signal alarms work here. Exits on EOF, i.e. when the parent
    closes its end or dies.
    """
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    _warmed_up()  # import and warm up math-verify/sympy before reporting ready: start-up is not charged to a check
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_equivalent(*request))


class _Worker:
    """A fresh interpreter running `_worker_main`, talking over a socketpair.

    A plain `subprocess` rather than a multiprocessing `spawn` context: `spawn` re-imports the launching script in the
    child, which re-runs an unguarded training script (and fails outright for stdin/notebook mains). The directory
    holding this `cat_trl` is put on the child's path when it is not there already (source checkouts). POSIX only
    (`pass_fds`); elsewhere the start fails and the matcher degrades as documented on `AnswerMatcher`.
    """

    def __init__(self):
        parent, child = multiprocessing.Pipe()
        self.conn = parent
        code = (
            "import sys; r = sys.argv[2]; r in sys.path or sys.path.insert(0, r); "
            "from cat_trl.answers.match import _worker_main; _worker_main(int(sys.argv[1]))"
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(child.fileno()), _PACKAGE_ROOT],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        if not self.conn.poll(_WORKER_START_TIMEOUT) or self.conn.recv() != "ready":
            self.close()
            raise RuntimeError("answer verifier worker did not start")

    def check(self, a: str, b: str, timeout: float) -> str | None:
        """Status from the worker, or None when it missed its deadline (the caller then kills it)."""
        self.conn.send((a, b, timeout))
        return self.conn.recv() if self.conn.poll(_worker_deadline(timeout)) else None

    def close(self) -> None:
        try:
            self.conn.close()
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(2)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(2)
        except Exception:  # pragma: no cover - best effort
            pass


# --------------------------------------------------------------------------------------------------------------------
# Public matcher
# --------------------------------------------------------------------------------------------------------------------


class AnswerMatcher:
    """Decides whether two final answers are the same answer.

    Args:
        mode: `"string"` compares `normalize_answer` keys (the paper's default); `"equivalent"` additionally asks
            math-verify whether the two are mathematically equal (`\\frac{1}{2}` vs `0.5`, `2\\sqrt{2}` vs
            `\\sqrt{8}`, intervals, tuples), in both directions. What the project adds before or around
            math-verify only rejects what math-verify would reject or fixes a documented false positive of its own
            (`OWN_FALSE_POSITIVE_FIXES`; THE RULE in the module docstring).
        timeout: seconds allowed per math-verify stage (parse, each comparison), rounded up to whole seconds because
            math-verify uses `signal.alarm`. Signals only work in the main thread, and TRL runs async reward functions
            on a daemon thread, so off the main thread each check instead goes to a persistent helper process (started
            lazily, one per matcher, in its own main thread) that enforces the same alarms, and is killed, counted as
            a timeout and restarted lazily if it misses a hard deadline (C-level hangs no signal can interrupt).
            `None` disables all timeouts and checks in-process everywhere: faster, but one pathological answer
            (`9^{9^{9^{9}}}`) can then stall training indefinitely.

    Outcomes are counted in `self.stats` ("fast_path", "numeric", "cache_hit", "verified", "rejected", "timeout", "error",
    "unparseable") for the trainer to log. If the helper process cannot be started at all, off-main-thread checks
    degrade to the string fast path and count as "error" (logged once) instead of retrying a start on every call.
    """

    _MAX_CACHE = 100_000
    #: decide pairs of plain numbers exactly without math-verify (benchmarks/run.py measures the gain)
    numeric_fast_path = True

    def __init__(self, mode: str = "string", timeout: float | None = 5.0):
        if mode not in MATCH_MODES:
            raise ValueError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.mode = mode
        self.timeout = timeout
        self.stats: Counter = Counter()
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._cache: dict[tuple[str, str], bool] = {}
        self._worker: _Worker | None = None
        self._worker_broken = False
        self._lock = threading.Lock()

    def __getstate__(self):
        # Caches, locks and the worker handle are process-local; a copy rebuilds them lazily.
        return {"mode": self.mode, "timeout": self.timeout, "stats": Counter(self.stats)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"AnswerMatcher(mode={self.mode!r}, timeout={self.timeout!r})"

    def key(self, answer: str) -> str:
        """Canonical string key (`normalize_answer`): string-equal answers share it, so callers can group by dict."""
        return normalize_answer(answer)

    def match(self, a: str | None, b: str | None) -> bool:
        """True when `a` and `b` are the same answer under this matcher's mode. Never raises; None (no answer) and
        answers that normalise to "" match nothing."""
        ka, kb = self.key(a), self.key(b)
        if not ka or not kb:
            return False
        if ka == kb:
            self.stats["fast_path"] += 1
            return True
        if self.mode == "string":
            self.stats["rejected"] += 1
            return False
        # The project's own false-positive fixes decided on the keys (`_own_rejection`): a base subscript that
        # differs, numbers side by side. Nothing else is rejected before math-verify (see THE RULE above).
        if _own_rejection(ka, kb) is not None:
            self.stats["rejected"] += 1
            return False
        # Two rational literals (no `%`, which normalisation strips but which changes the value) are decided by exact
        # arithmetic: no parser, the common case, and no 6-decimal rounding (`0.333333` is not `\frac{1}{3}`).
        x, y = _exact_rational(ka), _exact_rational(kb)
        if self.numeric_fast_path and x is not None and y is not None and "%" not in a and "%" not in b:
            self.stats["numeric"] += 1
            return x == y
        # Cached by what math-verify reads (the raw answers), never by the normalised keys: `50\%` vs `0.5` is
        # verified, and that verdict must not reach `50` vs `0.5`, which share those keys.
        ra, rb = a.strip(), b.strip()
        pair = (ra, rb) if ra < rb else (rb, ra)
        cached = self._cache.get(pair)
        if cached is not None:
            self.stats["cache_hit"] += 1
            return cached
        status = self._check(a, b)
        self.stats[status] += 1
        if len(self._cache) >= self._MAX_CACHE:
            self._cache.clear()
        self._cache[pair] = result = status == "verified"
        return result

    def _check(self, a: str, b: str) -> str:
        if self.timeout is None or threading.current_thread() is threading.main_thread():
            _warmed_up()
            return _equivalent(a, b, self.timeout)
        with self._lock:  # one request in flight per worker
            if self._worker_broken:
                return "error"
            if self._worker is None:
                try:
                    self._worker = _Worker()
                except Exception:
                    logger.warning("cannot start the answer verifier process; equivalence checks off the main "
                                   "thread now fall back to string matching", exc_info=True)
                    self._worker_broken = True
                    return "error"
            try:
                status = self._worker.check(a, b, self.timeout)
            except Exception:  # the worker died (EOF, broken pipe): replace it on the next check
                logger.warning("answer verifier process failed; restarting it", exc_info=True)
                status = "error"
            if status is None or status == "error":
                self.close_worker()
            return "timeout" if status is None else status

    def close_worker(self) -> None:
        """Stop the helper process (if any); the next off-main-thread check starts a fresh one."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def __del__(self):
        try:
            self.close_worker()
        except Exception:
            pass
