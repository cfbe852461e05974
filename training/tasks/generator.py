"""Procedural Python tasks with hidden tests: 24 families x 3 difficulty levels, unlimited variants.

A task is fixed by (family, difficulty, variant): the variant picks the family's constants (the k in
"add k", the separator of a parser, ...) and the test inputs. Held-out tasks are the variants whose
hash falls in `HELDOUT_FRACTION`, so train and held-out tasks never share a (family, difficulty,
variant) and a train stream never sees a held-out task. Everything is a pure function of the seed.
Expected outputs come from the reference functions here, in the trainer's process, and never enter
the sandbox (the tests are hidden).

Difficulty: 1 = small inputs and one rule, 2 = larger inputs and edge cases (empty, negative),
3 = a harder variant of the rule where the family has one (e.g. deep flattening, base-b digits).
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from training.tasks.base import Task, format_prompt

HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    """arithmetic | strings | lists | dicts | recursion | parsing (for reporting)."""
    make: Callable[[random.Random, int], tuple[str, str, Callable, Callable[[], list]]]
    """(rng, difficulty) -> (signature, description, reference, draw_args)."""


def _ints(rng: random.Random, d: int, n: int | None = None) -> list[int]:
    n = rng.randint(0 if d > 1 else 1, 3 + 3 * d) if n is None else n
    lo = -10 * d if d > 1 else 0
    return [rng.randint(lo, 10 * d * d) for _ in range(n)]


def _word(rng: random.Random, d: int) -> str:
    return "".join(rng.choice("abcde" if d == 1 else string.ascii_lowercase) for _ in range(rng.randint(1, 3 + 2 * d)))


def _text(rng: random.Random, d: int) -> str:
    return " ".join(_word(rng, d) for _ in range(rng.randint(0 if d > 1 else 1, 2 + 2 * d)))


# --- the families ------------------------------------------------------------------------------

def _add_k(rng, d):
    k = rng.randint(1, 9 * d)
    return "add_k(x)", f"Return x plus {k}.", lambda x: x + k, lambda: [rng.randint(-50 * d, 50 * d)]


def _affine(rng, d):
    a, b = rng.randint(2, 3 + d), rng.randint(-9, 9)
    return "affine(x)", f"Return {a} * x + ({b}).", lambda x: a * x + b, lambda: [rng.randint(-20 * d, 20 * d)]


def _sum_multiples(rng, d):
    k = rng.randint(2, 3 + d)
    return ("sum_multiples(n)", f"Return the sum of the non-negative integers below n that are divisible by {k}.",
            lambda n: sum(i for i in range(max(n, 0)) if i % k == 0), lambda: [rng.randint(0, 30 * d)])


def _digit_sum(rng, d):
    base = 10 if d < 3 else rng.choice([2, 3, 8, 16])
    def ref(n):
        n, s = abs(n), 0
        while n:
            n, r = divmod(n, base)
            s += r
        return s
    desc = "Return the sum of the decimal digits of abs(n)." if base == 10 else \
        f"Return the sum of the digits of abs(n) written in base {base}."
    return "digit_sum(n)", desc, ref, lambda: [rng.randint(-(10 ** (2 + d)), 10 ** (2 + d))]


def _gcd(rng, d):
    return ("my_gcd(a, b)", "Return the greatest common divisor of two non-negative integers (my_gcd(0, 0) == 0).",
            math.gcd, lambda: [rng.randint(0, 20 * d * d), rng.randint(0, 20 * d * d)])


def _fizz(rng, d):
    p, q = rng.choice([(3, 5), (2, 7), (3, 4), (4, 6)][: 1 + d])
    def ref(n):
        s = ("Fizz" if n % p == 0 else "") + ("Buzz" if n % q == 0 else "")
        return s or str(n)
    return ("fizz(n)", f'Return "Fizz" if n is divisible by {p}, "Buzz" if by {q}, "FizzBuzz" if by both, '
            "else str(n).", ref, lambda: [rng.randint(1, 40 * d)])


def _count_char(rng, d):
    c = rng.choice("abcde")
    return ("count_char(s)", f"Return how many times the letter {c!r} occurs in s.", lambda s: s.count(c),
            lambda: [_text(rng, d)])


def _reverse_words(rng, d):
    return ("reverse_words(s)", "Return s with the order of its space-separated words reversed, joined by one space.",
            lambda s: " ".join(s.split()[::-1]), lambda: [_text(rng, d)])


def _palindrome(rng, d):
    def draw():
        w = _word(rng, d)
        return [w + w[::-1][rng.randint(0, 1):] if rng.random() < 0.5 else w]
    return "is_palindrome(s)", "Return True if s reads the same backwards, else False.", lambda s: s == s[::-1], draw


def _caesar(rng, d):
    k = rng.randint(1, 25)
    def ref(s):
        return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)
    return ("shift(s)", f"Shift every lowercase letter of s forward by {k} places in the alphabet (wrapping "
            "from z to a); leave other characters alone.", ref, lambda: [_text(rng, d)])


def _rle(rng, d):
    def ref(s):
        out, i = [], 0
        while i < len(s):
            j = i
            while j < len(s) and s[j] == s[i]:
                j += 1
            out.append(f"{s[i]}{j - i}")
            i = j
        return "".join(out)
    return ("rle(s)", 'Run-length encode s: each run of a repeated character becomes the character and the run '
            'length, e.g. "aaab" -> "a3b1".', ref, lambda: ["".join(rng.choice("ab" if d == 1 else "abc") * rng.randint(1, 3)
                                                           for _ in range(rng.randint(0, 2 + 2 * d)))])


def _vowels(rng, d):
    return ("count_vowels(s)", "Return the number of vowels (a, e, i, o, u) in s.",
            lambda s: sum(c in "aeiou" for c in s), lambda: [_text(rng, d)])


def _title(rng, d):
    return ("title_words(s)", "Capitalise the first letter of every space-separated word of s and join the words "
            "with one space.", lambda s: " ".join(w[:1].upper() + w[1:] for w in s.split()), lambda: [_text(rng, d)])


def _range_span(rng, d):
    return ("span(xs)", "Return max(xs) - min(xs), or 0 for an empty list.",
            lambda xs: max(xs) - min(xs) if xs else 0, lambda: [_ints(rng, d)])


def _filter_mult(rng, d):
    k = rng.randint(2, 2 + d)
    return ("multiples(xs)", f"Return the elements of xs divisible by {k}, in order.",
            lambda xs: [x for x in xs if x % k == 0], lambda: [_ints(rng, d)])


def _second_largest(rng, d):
    def ref(xs):
        u = sorted(set(xs))
        return u[-2] if len(u) >= 2 else None
    return "second_largest(xs)", "Return the second largest distinct value of xs, or None if there is none.", ref, \
        lambda: [_ints(rng, d)]


def _merge_sorted(rng, d):
    return ("merge_sorted(a, b)", "Merge two sorted lists into one sorted list.", lambda a, b: sorted(a + b),
            lambda: [sorted(_ints(rng, d)), sorted(_ints(rng, d))])


def _running_sum(rng, d):
    def ref(xs):
        out, t = [], 0
        for x in xs:
            t += x
            out.append(t)
        return out
    return "running_sum(xs)", "Return the list of running totals of xs.", ref, lambda: [_ints(rng, d)]


def _word_freq(rng, d):
    def ref(s):
        out: dict = {}
        for w in s.split():
            out[w] = out.get(w, 0) + 1
        return out
    return "word_freq(s)", "Return a dict mapping each space-separated word of s to how often it occurs.", ref, \
        lambda: [_text(rng, 1)]


def _invert(rng, d):
    def draw():
        keys = rng.sample(string.ascii_lowercase, rng.randint(0 if d > 1 else 1, 3 + d))
        vals = rng.sample(range(100), len(keys))
        return [dict(zip(keys, vals, strict=False))]
    return "invert(d)", "Return a new dict mapping each value of d to its key (values are unique).", \
        lambda m: {v: k for k, v in m.items()}, draw


def _group_len(rng, d):
    def ref(words):
        out: dict = {}
        for w in words:
            out.setdefault(len(w), []).append(w)
        return out
    return "group_by_length(words)", "Return a dict mapping each word length to the list of words of that length, " \
        "in input order.", ref, lambda: [_text(rng, d).split()]


def _fib(rng, d):
    a, b = (0, 1) if d == 1 else (rng.randint(0, 3), rng.randint(1, 4))
    def ref(n):
        x, y = a, b
        for _ in range(n):
            x, y = y, x + y
        return x
    return "seq(n)", f"Return term n (from 0) of the sequence s(0) = {a}, s(1) = {b}, s(n) = s(n-1) + s(n-2).", \
        ref, lambda: [rng.randint(0, 8 * d)]


def _flatten(rng, d):
    def nested(depth):
        out = []
        for _ in range(rng.randint(0, 3)):
            out.append(nested(depth - 1) if depth > 0 and rng.random() < 0.4 else rng.randint(0, 9))
        return out
    if d < 3:
        return ("flatten(xs)", "xs is a list whose elements are ints or lists of ints; return one flat list of "
                "the ints, in order.", lambda xs: [y for x in xs for y in (x if isinstance(x, list) else [x])],
                lambda: [nested(1)])
    def deep(xs):
        return [z for x in xs for z in (deep(x) if isinstance(x, list) else [x])]
    return "flatten(xs)", "Flatten arbitrarily nested lists of ints into one list, in order.", deep, lambda: [nested(3)]


def _balanced(rng, d):
    pairs = "()" if d == 1 else "()[]{}"
    def ref(s):
        stack, match = [], {pairs[i + 1]: pairs[i] for i in range(0, len(pairs), 2)}
        for c in s:
            if c in match.values():
                stack.append(c)
            elif c in match and (not stack or stack.pop() != match[c]):
                return False
        return not stack
    return "balanced(s)", f"Return True if the brackets {' '.join(pairs)} in s are balanced and properly nested.", \
        ref, lambda: ["".join(rng.choice(pairs) for _ in range(rng.randint(0, 2 + 2 * d)))]


def _parse_kv(rng, d):
    sep, eq = rng.choice([(";", "="), (",", ":"), ("&", "=")][: d])
    def draw():
        keys = rng.sample(string.ascii_lowercase, rng.randint(1, 2 + d))
        return [sep.join(f"{k}{eq}{rng.randint(-9 * d, 99)}" for k in keys)]
    return "parse_pairs(s)", f'Parse a string like "a{eq}1{sep}b{eq}2" into a dict of str to int.', \
        lambda s: {k: int(v) for k, v in (p.split(eq) for p in s.split(sep))}, draw


def _parse_sum(rng, d):
    sep = ", " if d > 1 else ","
    return ("sum_csv(s)", f'Return the sum of the integers in a string separated by "{sep}" (empty string: 0).',
            lambda s: sum(int(x) for x in s.split(sep)) if s else 0,
            lambda: [sep.join(str(x) for x in _ints(rng, d))])


def _power(rng, d):
    m = rng.choice([7, 11, 13, 97, 1000])
    return ("pow_mod(b, e)", f"Return b ** e % {m}, computed recursively by squaring (e >= 0).",
            lambda b, e: pow(b, e, m), lambda: [rng.randint(0, 50), rng.randint(0, 10 ** d)])


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("add_k", "arithmetic", _add_k), Family("affine", "arithmetic", _affine),
    Family("sum_multiples", "arithmetic", _sum_multiples), Family("digit_sum", "arithmetic", _digit_sum),
    Family("gcd", "arithmetic", _gcd), Family("fizz", "arithmetic", _fizz),
    Family("count_char", "strings", _count_char), Family("reverse_words", "strings", _reverse_words),
    Family("palindrome", "strings", _palindrome), Family("caesar", "strings", _caesar),
    Family("rle", "strings", _rle), Family("vowels", "strings", _vowels), Family("title", "strings", _title),
    Family("span", "lists", _range_span), Family("multiples", "lists", _filter_mult),
    Family("second_largest", "lists", _second_largest), Family("merge_sorted", "lists", _merge_sorted),
    Family("running_sum", "lists", _running_sum), Family("word_freq", "dicts", _word_freq),
    Family("invert", "dicts", _invert), Family("group_by_length", "dicts", _group_len),
    Family("fib", "recursion", _fib), Family("flatten", "recursion", _flatten), Family("pow_mod", "recursion", _power),
    Family("balanced", "parsing", _balanced), Family("parse_pairs", "parsing", _parse_kv),
    Family("sum_csv", "parsing", _parse_sum),
]}


def is_heldout(family: str, difficulty: int, variant: int) -> bool:
    h = hashlib.sha256(f"{family}:{difficulty}:{variant}".encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32 < HELDOUT_FRACTION


def make_task(family: str, difficulty: int, variant: int, *, n_tests: int | None = None) -> Task:
    """The task (family, difficulty, variant): same arguments, same task, on any machine."""
    rng = random.Random(f"{family}:{difficulty}:{variant}")
    signature, description, ref, draw = FAMILIES[family].make(rng, difficulty)
    n = n_tests or 4 + 2 * difficulty
    inputs, seen = [], set()
    for _ in range(n * 4):
        args = draw()
        key = repr(args)
        if key not in seen:
            seen.add(key)
            inputs.append(args)
        if len(inputs) == n:
            break
    expected = [ref(*[_copy(a) for a in args]) for args in inputs]
    name = signature.split("(")[0]
    examples = [(f"{name}({', '.join(map(repr, args))})", repr(out)) for args, out in zip(inputs[:2], expected[:2], strict=False)]
    return Task(task_id=f"gen/{family}/d{difficulty}/v{variant}", prompt=format_prompt(description, signature, examples),
                entry_point=name, inputs=inputs, expected=expected, family=family, difficulty=difficulty)


def _copy(x):
    return [_copy(v) for v in x] if isinstance(x, list) else (dict(x) if isinstance(x, dict) else x)


class TaskGenerator:
    """An endless, seeded stream of generated tasks from one split ("train" or "heldout").

    `difficulties` restricts the levels drawn; `position` counts tasks drawn so far and is the whole
    state (a generator at position p draws exactly what a fresh one would after p draws).
    """

    def __init__(self, seed: int, *, split: str = "train", difficulties: tuple[int, ...] = (1, 2, 3),
                 families: tuple[str, ...] | None = None) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train or heldout, got {split!r}")
        self.seed, self.split, self.difficulties = seed, split, tuple(difficulties)
        self.families = tuple(families or FAMILIES)
        self.position = 0

    def task_at(self, index: int) -> Task:
        rng = random.Random(f"{self.seed}:{self.split}:{index}")
        family, difficulty = rng.choice(self.families), rng.choice(self.difficulties)
        want_heldout = self.split == "heldout"
        while True:
            variant = rng.randrange(1 << 30)
            if is_heldout(family, difficulty, variant) == want_heldout:
                return make_task(family, difficulty, variant)

    def take(self, n: int) -> list[Task]:
        out = [self.task_at(self.position + i) for i in range(n)]
        self.position += n
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "split": self.split, "position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.position = int(d["position"])
