"""Embedded seed corpus: an unlimited, deterministic stream of text, code and math documents.

Everything here (templates, word lists, names) is written for this project; no third-party text is
vendored. The corpus exists so that the first `--bootstrap-seed-batches` steps can run within
seconds, identically across runs, while real data sources warm up, and so that tests and offline
runs always have data.

Design:
- Document `i` of seed `s` depends only on `(s, i)`: it is drawn from `random.Random(f"{s}:{i}")`,
  so the stream can resume at any index without replaying the prefix.
- Domains interleave with a fixed period (`_DOMAIN_CYCLE`): half text, a quarter code, a quarter math.
- The text is synthetic but structured (consistent entities inside a document, grammatical
  templates, code that compiles, arithmetic that is right), so a tiny LM's loss drops well below
  uniform on it. Documents are 200-1500 characters.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from itertools import count

from training.data.documents import Document

MIN_CHARS = 200
MAX_CHARS = 1500

# Fixed interleaving: document i gets _DOMAIN_CYCLE[i % 4].
_DOMAIN_CYCLE = ("text", "code", "text", "math")


def seed_documents(seed: int, start: int = 0) -> Iterator[Document]:
    """Yield seed-corpus documents `start, start+1, ...` forever; document i depends only on (seed, i)."""
    for i in count(start):
        yield seed_document(seed, i)


def seed_document(seed: int, index: int) -> Document:
    """Return document `index` of the seed corpus for `seed` (pure function of its arguments)."""
    rng = random.Random(f"{seed}:{index}")
    domain = _DOMAIN_CYCLE[index % len(_DOMAIN_CYCLE)]
    make_unit = _UNIT_MAKERS[domain]
    # Documents are built from self-contained units (paragraphs, functions, problems) until a target
    # length is reached; a unit that would overflow MAX_CHARS is dropped rather than cut, so code
    # always compiles and every problem keeps its answer.
    target = rng.randint(MIN_CHARS + 50, MAX_CHARS - 300)
    parts: list[str] = []
    length = 0
    for _ in range(50):
        unit = make_unit(rng)
        extra = len(unit) + (2 if parts else 0)
        if length + extra > MAX_CHARS:
            if length >= MIN_CHARS:
                break
            continue
        parts.append(unit)
        length += extra
        if length >= target:
            break
    return Document(text="\n\n".join(parts), domain=domain, source="seed")


# ---------------------------------------------------------------------------------------------
# Shared vocabulary
# ---------------------------------------------------------------------------------------------

_NAMES_SHE = ("Mira", "Lena", "Tova", "Nadia", "Iris", "Hana", "Elsa", "Priya", "Rosa", "Yuki", "Ada", "Noor")
_NAMES_HE = (
    "Tomas",
    "Omar",
    "Felix",
    "Kenji",
    "Arlo",
    "Ravi",
    "Bruno",
    "Milo",
    "Sami",
    "Jonah",
    "Ivo",
    "Leon",
)
_ROLES = (
    "baker",
    "fisher",
    "teacher",
    "carpenter",
    "gardener",
    "painter",
    "doctor",
    "farmer",
    "sailor",
    "miller",
    "weaver",
    "student",
    "librarian",
    "potter",
)
_PLACES = (
    "a small village by the sea",
    "a busy town in the valley",
    "a quiet house near the forest",
    "an old city on a hill",
    "a farm at the edge of the plains",
    "a cottage beside a river",
    "a narrow street in the harbor district",
    "a mountain town covered in snow",
)
_ADJ_PERSON = (
    "kind",
    "curious",
    "patient",
    "clever",
    "quiet",
    "cheerful",
    "careful",
    "brave",
    "gentle",
    "busy",
)
_TIMES = ("morning", "evening", "afternoon", "night")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_OBJECTS = (
    "a wooden box",
    "an old map",
    "a silver key",
    "a small bird",
    "a torn letter",
    "a glass bottle",
    "a red kite",
    "a lost dog",
    "a heavy stone",
    "a broken clock",
    "a paper boat",
)
_LANDMARKS = (
    "bridge",
    "market",
    "old well",
    "lighthouse",
    "school",
    "mill",
    "harbor",
    "garden gate",
    "station",
)
_HABITS = (
    "walked to the {lm} to buy bread",
    "read a book by the window",
    "watered the plants in the garden",
    "fed the ducks near the {lm}",
    "swept the floor of the shop",
    "wrote a letter to an old friend",
    "went for a long walk along the river",
    "mended nets by the {lm}",
)
_FEELINGS = ("happy", "surprised", "worried", "proud", "tired", "excited", "calm", "grateful")


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


def _person(rng: random.Random) -> tuple[str, str, str, str]:
    """Return (name, subject pronoun, object pronoun, possessive) with matching grammar."""
    if rng.random() < 0.5:
        return _pick(rng, _NAMES_SHE), "she", "her", "her"
    return _pick(rng, _NAMES_HE), "he", "him", "his"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------------------------------------
# Domain "text": stories, descriptions of invented creatures, how-to guides, letters, sequences
# ---------------------------------------------------------------------------------------------


def _story(rng: random.Random) -> str:
    name, he, him, his = _person(rng)
    friend, fhe, _, _ = _person(rng)
    while friend == name:
        friend, fhe, _, _ = _person(rng)
    lm = _pick(rng, _LANDMARKS)
    obj = _pick(rng, _OBJECTS)
    habit = _pick(rng, _HABITS).format(lm=lm)
    sentences = [
        f"{name} was a {_pick(rng, _ADJ_PERSON)} {_pick(rng, _ROLES)} who lived in {_pick(rng, _PLACES)}.",
        f"Every {_pick(rng, _TIMES)}, {he} {habit}.",
        f"One {_pick(rng, _DAYS)}, {he} found {obj} near the {lm}.",
    ]
    choice = rng.randrange(3)
    if choice == 0:
        sentences += [
            f"{_cap(he)} showed it to {his} friend {friend}.",
            f'"Where did you find this?" asked {friend}.',
            f'"Near the {lm}," said {name}. "I think someone lost it."',
            f"Together they asked everyone in town, and at last the owner thanked {him}.",
        ]
    elif choice == 1:
        sentences += [
            f"{_cap(he)} felt {_pick(rng, _FEELINGS)} and did not know what to do.",
            f"{_cap(he)} sat down and thought about it for a long time.",
            f"In the end, {he} decided to keep it safe until someone came to ask for it.",
        ]
    else:
        sentences += [
            f"At first {he} was {_pick(rng, _FEELINGS)}, but then {he} laughed.",
            f"{_cap(he)} carried it home and put it on the shelf next to {his} books.",
            f"When {friend} came to visit, {fhe} asked about it, and {name} told the whole story.",
        ]
    sentences.append(f"From that day on, {name} always looked carefully when {he} passed the {lm}.")
    return " ".join(sentences)


_CREATURE_A = ("moss", "river", "sand", "cloud", "ember", "frost", "reed", "amber", "stone", "willow")
_CREATURE_B = ("beetle", "finch", "lizard", "hare", "moth", "otter", "toad", "heron", "snail", "fox")
_HABITATS = (
    "wet forests",
    "dry grasslands",
    "rocky coasts",
    "high mountains",
    "slow rivers",
    "sandy deserts",
)
_FOODS = ("seeds", "small insects", "leaves", "fruit", "worms", "tiny fish", "roots")
_COLORS = ("brown", "grey", "green", "golden", "black", "white", "blue", "orange")


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("x", "sh", "ch", "s")) else noun + "s"


def _creature(rng: random.Random) -> str:
    name = f"{_pick(rng, _CREATURE_A)} {_pick(rng, _CREATURE_B)}"
    Name = _cap(name)
    color = _pick(rng, _COLORS)
    size = rng.randint(3, 60)
    food = _pick(rng, _FOODS)
    habitat = _pick(rng, _HABITATS)
    young = rng.randint(2, 9)
    return " ".join(
        [
            f"The {name} is a small animal that lives in {habitat}.",
            f"An adult {name} is about {size} centimeters long and has {color} fur or feathers.",
            f"It feeds mainly on {food}, which it finds early in the {_pick(rng, _TIMES)}.",
            f"In spring, a {name} usually has {young} young.",
            f"{_plural(Name)} are {_pick(rng, ('shy', 'social', 'noisy', 'careful', 'fast'))} and "
            f"{_pick(rng, ('rarely', 'often', 'sometimes'))} travel in groups.",
            f"Because it eats {food}, the {name} helps keep {habitat} healthy.",
        ]
    )


_HOWTO = {
    "plant a tree": (
        "Choose a sunny place with enough space",
        "Dig a hole twice as wide as the roots",
        "Place the tree in the hole and fill it with soil",
        "Water the tree well",
        "Keep watering it every week during the first summer",
    ),
    "make tea": (
        "Boil fresh water",
        "Put the tea leaves in a warm pot",
        "Pour the hot water over the leaves",
        "Wait three to five minutes",
        "Pour the tea into a cup and enjoy it",
    ),
    "clean a bicycle": (
        "Rinse the frame with water",
        "Scrub the chain with a brush and soap",
        "Dry every part with a soft cloth",
        "Add a few drops of oil to the chain",
        "Check that the brakes still work",
    ),
    "study for a test": (
        "Make a list of the topics",
        "Read your notes for each topic",
        "Write short questions and answer them",
        "Take a break every hour",
        "Sleep well the night before the test",
    ),
    "bake bread": (
        "Mix flour, water, salt and yeast",
        "Knead the dough for ten minutes",
        "Let the dough rise for an hour",
        "Shape the loaf and put it in the oven",
        "Let the bread cool before cutting it",
    ),
}
_ORDINALS = ("First", "Next", "Then", "After that", "Finally")


def _howto(rng: random.Random) -> str:
    task = _pick(rng, tuple(_HOWTO))
    steps = _HOWTO[task]
    lines = [f"How to {task}", ""]
    if rng.random() < 0.5:
        lines += [f"{i + 1}. {s}." for i, s in enumerate(steps)]
    else:
        lines.append(" ".join(f"{o}, {s[0].lower()}{s[1:]}." for o, s in zip(_ORDINALS, steps, strict=True)))
    return "\n".join(lines)


def _letter(rng: random.Random) -> str:
    name, _, _, _ = _person(rng)
    writer, _, _, _ = _person(rng)
    day = _pick(rng, _DAYS)
    return "\n".join(
        [
            f"Dear {name},",
            "",
            f"I hope you are well. Last {day} I visited {_pick(rng, _PLACES)} and thought of you.",
            f"I met a {_pick(rng, _ADJ_PERSON)} {_pick(rng, _ROLES)} who showed me {_pick(rng, _OBJECTS)}.",
            f"I was {_pick(rng, _FEELINGS)} the whole day. Please write back soon and tell me your news.",
            "",
            "Best wishes,",
            writer,
        ]
    )


_SEQUENCES = (
    _DAYS,
    (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"),
)


def _sequence(rng: random.Random) -> str:
    seq = _pick(rng, _SEQUENCES)
    i = rng.randrange(len(seq) - 4)
    sents = [f"After {seq[j]} comes {seq[j + 1]}." for j in range(i, i + 4)]
    return " ".join(sents) + f" The list goes: {', '.join(seq)}."


_TEXT_UNITS: tuple[Callable[[random.Random], str], ...] = (
    _story,
    _story,
    _creature,
    _howto,
    _letter,
    _sequence,
)


def _text_unit(rng: random.Random) -> str:
    return _TEXT_UNITS[rng.randrange(len(_TEXT_UNITS))](rng)


# ---------------------------------------------------------------------------------------------
# Domain "code": small Python functions and classes with docstrings and checked examples
# ---------------------------------------------------------------------------------------------

_SEQ_ARGS = ("values", "numbers", "items", "xs", "data", "scores")
_NUM_ARGS = (("a", "b"), ("x", "y"), ("first", "second"), ("left", "right"), ("m", "n"))


def _int_list(rng: random.Random, n: int | None = None) -> list[int]:
    return [rng.randint(-9, 20) for _ in range(n if n is not None else rng.randint(3, 6))]


def _code_binary(rng: random.Random) -> str:
    a, b = _pick(rng, _NUM_ARGS)
    ops = (
        ("add", "Return the sum of {a} and {b}.", "{a} + {b}", lambda p, q: p + q),
        ("subtract", "Return {a} minus {b}.", "{a} - {b}", lambda p, q: p - q),
        ("multiply", "Return the product of {a} and {b}.", "{a} * {b}", lambda p, q: p * q),
        ("maximum", "Return the larger of {a} and {b}.", "{a} if {a} >= {b} else {b}", max),
        ("minimum", "Return the smaller of {a} and {b}.", "{a} if {a} <= {b} else {b}", min),
        ("average", "Return the mean of {a} and {b}.", "({a} + {b}) / 2", lambda p, q: (p + q) / 2),
    )
    stem, doc, expr, fn = ops[rng.randrange(len(ops))]
    name = _pick(rng, (stem, f"{stem}_numbers", f"compute_{stem}", f"{stem}_two"))
    p, q = rng.randint(-20, 50), rng.randint(-20, 50)
    return (
        f"def {name}({a}: int, {b}: int) -> {'float' if stem == 'average' else 'int'}:\n"
        f'    """{doc.format(a=a, b=b)}\n\n'
        f"    >>> {name}({p}, {q})\n    {fn(p, q)!r}\n"
        f'    """\n'
        f"    return {expr.format(a=a, b=b)}\n"
    )


def _code_list(rng: random.Random) -> str:
    xs = _pick(rng, _SEQ_ARGS)
    v = _pick(rng, ("value", "x", "item", "n"))
    kinds = (
        (
            "sum_of_squares",
            "Return the sum of the squares of {xs}.",
            "int",
            ["total = 0", "for {v} in {xs}:", "    total += {v} * {v}", "return total"],
            lambda L: sum(t * t for t in L),
        ),
        (
            "count_even",
            "Count how many numbers in {xs} are even.",
            "int",
            ["count = 0", "for {v} in {xs}:", "    if {v} % 2 == 0:", "        count += 1", "return count"],
            lambda L: sum(1 for t in L if t % 2 == 0),
        ),
        (
            "keep_positive",
            "Return a new list with only the positive numbers of {xs}.",
            "list[int]",
            ["return [{v} for {v} in {xs} if {v} > 0]"],
            lambda L: [t for t in L if t > 0],
        ),
        (
            "largest",
            "Return the largest number in {xs}.",
            "int",
            [
                "best = {xs}[0]",
                "for {v} in {xs}[1:]:",
                "    if {v} > best:",
                "        best = {v}",
                "return best",
            ],
            max,
        ),
        (
            "double_all",
            "Return a list with every number in {xs} doubled.",
            "list[int]",
            ["return [2 * {v} for {v} in {xs}]"],
            lambda L: [2 * t for t in L],
        ),
        (
            "running_total",
            "Return the running totals of {xs}.",
            "list[int]",
            [
                "result = []",
                "total = 0",
                "for {v} in {xs}:",
                "    total += {v}",
                "    result.append(total)",
                "return result",
            ],
            lambda L: [sum(L[: k + 1]) for k in range(len(L))],
        ),
    )
    stem, doc, ret, body, fn = kinds[rng.randrange(len(kinds))]
    sample = _int_list(rng)
    lines = [
        f"def {stem}({xs}: list[int]) -> {ret}:",
        f'    """{doc.format(xs=xs)}',
        "",
        f"    >>> {stem}({sample!r})",
        f"    {fn(sample)!r}",
        '    """',
    ]
    lines += ["    " + line.format(xs=xs, v=v) for line in body]
    return "\n".join(lines) + "\n"


def _code_string(rng: random.Random) -> str:
    s = _pick(rng, ("text", "word", "s", "line"))
    word = _pick(rng, ("banana", "level", "garden", "python", "rotor", "kite", "window"))
    kinds = (
        (
            "is_palindrome",
            "Return True if {s} reads the same forwards and backwards.",
            "bool",
            "return {s} == {s}[::-1]",
            lambda w: w == w[::-1],
        ),
        (
            "count_vowels",
            "Count the vowels in {s}.",
            "int",
            'return sum(1 for ch in {s} if ch in "aeiou")',
            lambda w: sum(1 for c in w if c in "aeiou"),
        ),
        ("reverse_text", "Return {s} reversed.", "str", "return {s}[::-1]", lambda w: w[::-1]),
        (
            "shout",
            "Return {s} in upper case with an exclamation mark.",
            "str",
            'return {s}.upper() + "!"',
            lambda w: w.upper() + "!",
        ),
    )
    stem, doc, ret, body, fn = kinds[rng.randrange(len(kinds))]
    return (
        f"def {stem}({s}: str) -> {ret}:\n"
        f'    """{doc.format(s=s)}\n\n    >>> {stem}({word!r})\n    {fn(word)!r}\n    """\n'
        f"    {body.format(s=s)}\n"
    )


def _code_class(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        cls = _pick(rng, ("Stack", "Pile", "ItemStack"))
        return (
            f"class {cls}:\n"
            f'    """A last-in, first-out collection."""\n\n'
            f"    def __init__(self) -> None:\n        self._items: list[int] = []\n\n"
            f"    def push(self, item: int) -> None:\n"
            f'        """Put item on top of the stack."""\n        self._items.append(item)\n\n'
            f"    def pop(self) -> int:\n"
            f'        """Remove and return the top item."""\n        return self._items.pop()\n\n'
            f"    def __len__(self) -> int:\n        return len(self._items)\n"
        )
    if kind == 1:
        cls = _pick(rng, ("BankAccount", "Wallet", "Account"))
        start = rng.randint(0, 500)
        return (
            f"class {cls}:\n"
            f'    """Keep track of a balance in whole units."""\n\n'
            f"    def __init__(self, balance: int = {start}) -> None:\n        self.balance = balance\n\n"
            f"    def deposit(self, amount: int) -> None:\n"
            f'        """Add amount to the balance."""\n'
            f"        if amount <= 0:\n"
            f'            raise ValueError("amount must be positive")\n'
            f"        self.balance += amount\n\n"
            f"    def withdraw(self, amount: int) -> None:\n"
            f'        """Take amount from the balance if there is enough."""\n'
            f"        if amount > self.balance:\n"
            f'            raise ValueError("not enough money")\n'
            f"        self.balance -= amount\n"
        )
    cls = _pick(rng, ("Point", "Vector", "Position"))
    return (
        f"class {cls}:\n"
        f'    """A point in the plane."""\n\n'
        f"    def __init__(self, x: float, y: float) -> None:\n        self.x = x\n        self.y = y\n\n"
        f'    def distance_to(self, other: "{cls}") -> float:\n'
        f'        """Return the straight-line distance to other."""\n'
        f"        dx = self.x - other.x\n        dy = self.y - other.y\n"
        f"        return (dx * dx + dy * dy) ** 0.5\n"
    )


def _code_test(rng: random.Random) -> str:
    """A tiny function plus asserts whose expected values are computed here, so they are correct."""
    a, b = _pick(rng, _NUM_ARGS)
    k = rng.randint(2, 9)
    name = _pick(rng, ("scale_and_add", "combine", "mix_values"))
    lines = [
        f"def {name}({a}: int, {b}: int) -> int:",
        f'    """Return {k} times {a} plus {b}."""',
        f"    return {k} * {a} + {b}",
        "",
        "",
        f"def test_{name}() -> None:",
    ]
    for _ in range(rng.randint(2, 4)):
        p, q = rng.randint(-10, 30), rng.randint(-10, 30)
        lines.append(f"    assert {name}({p}, {q}) == {k * p + q}")
    return "\n".join(lines) + "\n"


_CODE_UNITS: tuple[Callable[[random.Random], str], ...] = (
    _code_binary,
    _code_list,
    _code_list,
    _code_string,
    _code_class,
    _code_test,
)


def _code_unit(rng: random.Random) -> str:
    return _CODE_UNITS[rng.randrange(len(_CODE_UNITS))](rng)


# ---------------------------------------------------------------------------------------------
# Domain "math": word problems with worked solutions
# Format (parsed by the tests): each calculation is "Step k: <words>: <expr> = <int>", the last step's
# result is the "Answer: N" line; equations also get a "Check: <expr> = <int>" line.
# ---------------------------------------------------------------------------------------------

_THINGS = ("apples", "marbles", "stickers", "books", "pencils", "shells", "cookies", "stamps", "coins")


def _fmt_problem(question: str, steps: list[tuple[str, str, int]], check: str | None = None) -> str:
    lines = [f"Problem: {question}", "Solution:"]
    for k, (words, expr, value) in enumerate(steps, start=1):
        lines.append(f"Step {k}: {words}: {expr} = {value}")
    if check is not None:
        lines.append(f"Check: {check}")
    lines.append(f"Answer: {steps[-1][2]}")
    return "\n".join(lines)


def _math_add_sub(rng: random.Random) -> str:
    name, he, _, _ = _person(rng)
    friend, _, _, _ = _person(rng)
    thing = _pick(rng, _THINGS)
    a, b = rng.randint(5, 80), rng.randint(2, 40)
    c = rng.randint(1, a + b)
    q = (
        f"{name} has {a} {thing}. {_cap(he)} gets {b} more and then gives {c} to {friend}. "
        f"How many {thing} does {name} have now?"
    )
    return _fmt_problem(
        q,
        [
            (f"{thing} after getting more", f"{a} + {b}", a + b),
            (f"{thing} after giving some away", f"{a + b} - {c}", a + b - c),
        ],
    )


def _math_mul_div(rng: random.Random) -> str:
    thing = _pick(rng, _THINGS)
    a, b = rng.randint(2, 15), rng.randint(2, 15)
    if rng.random() < 0.5:
        q = f"A box holds {a} {thing}. How many {thing} are in {b} boxes?"
        return _fmt_problem(q, [("total", f"{a} * {b}", a * b)])
    q = f"{a * b} {thing} are shared equally among {a} children. How many {thing} does each child get?"
    return _fmt_problem(q, [("each child gets", f"{a * b} / {a}", b)])


def _math_equation(rng: random.Random) -> str:
    a, x, b = rng.randint(2, 12), rng.randint(-10, 20), rng.randint(1, 50)
    sign = "+" if rng.random() < 0.5 else "-"
    c = a * x + b if sign == "+" else a * x - b
    undo = "-" if sign == "+" else "+"
    q = f"Solve for x: {a}x {sign} {b} = {c}."
    steps = [
        (f"move the constant, so {a}x equals", f"{c} {undo} {b}", a * x),
        ("divide by the coefficient", f"{a * x} / {a}", x),
    ]
    return _fmt_problem(q, steps, check=f"{a} * {x} {sign} {b} = {c}")


def _math_geometry(rng: random.Random) -> str:
    w, h = rng.randint(2, 30), rng.randint(2, 30)
    if rng.random() < 0.5:
        q = f"A rectangle is {w} cm wide and {h} cm long. What is its area in square centimeters?"
        return _fmt_problem(q, [("area is width times length", f"{w} * {h}", w * h)])
    q = f"A rectangle is {w} cm wide and {h} cm long. What is its perimeter in centimeters?"
    return _fmt_problem(
        q, [("half the perimeter", f"{w} + {h}", w + h), ("the perimeter", f"2 * {w + h}", 2 * (w + h))]
    )


def _math_money(rng: random.Random) -> str:
    name, he, _, _ = _person(rng)
    a, p, b, r = rng.randint(2, 6), rng.randint(1, 9), rng.randint(1, 5), rng.randint(2, 12)
    total = a * p + b * r
    bill = ((total // 10) + 1) * 10
    q = (
        f"{name} buys {a} pens at {p} dollars each and {b} notebooks at {r} dollars each. "
        f"{_cap(he)} pays with {bill} dollars. How much change does {he} get?"
    )
    return _fmt_problem(
        q,
        [
            ("cost of the pens", f"{a} * {p}", a * p),
            ("cost of the notebooks", f"{b} * {r}", b * r),
            ("total cost", f"{a * p} + {b * r}", total),
            ("change", f"{bill} - {total}", bill - total),
        ],
    )


def _math_speed(rng: random.Random) -> str:
    v, t = rng.randint(20, 120), rng.randint(2, 9)
    vehicle = _pick(rng, ("train", "bus", "car", "boat", "cyclist"))
    q = f"A {vehicle} travels at {v} km per hour for {t} hours. How far does it travel in km?"
    return _fmt_problem(q, [("distance is speed times time", f"{v} * {t}", v * t)])


def _math_percent(rng: random.Random) -> str:
    p = _pick(rng, ("10", "20", "25", "50", "75", "5"))
    base = rng.randint(1, 30) * 20  # a multiple of 20 makes every listed percentage a whole number
    q = f"What is {p}% of {base}?"
    return _fmt_problem(q, [("multiply and divide by 100", f"{base} * {p} / 100", base * int(p) // 100)])


def _math_expression(rng: random.Random) -> str:
    a, b, c = rng.randint(1, 60), rng.randint(2, 12), rng.randint(2, 12)
    q = f"Compute {a} + {b} * {c}."
    return _fmt_problem(
        q, [("multiplication first", f"{b} * {c}", b * c), ("then addition", f"{a} + {b * c}", a + b * c)]
    )


_MATH_UNITS: tuple[Callable[[random.Random], str], ...] = (
    _math_add_sub,
    _math_mul_div,
    _math_equation,
    _math_geometry,
    _math_money,
    _math_speed,
    _math_percent,
    _math_expression,
)


def _math_unit(rng: random.Random) -> str:
    return _MATH_UNITS[rng.randrange(len(_MATH_UNITS))](rng)


_UNIT_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "text": _text_unit,
    "code": _code_unit,
    "math": _math_unit,
}
