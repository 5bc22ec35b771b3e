"""Math: question/answer practice text from acodm's own seeded generator.

A distinct, unlimited domain with exact answers: arithmetic, order of operations, fractions,
percentages, linear and quadratic equations, 2x2 systems, sequences, unit conversion,
divisibility, statistics, geometry and word problems, with short worked answers. Each
document is a worksheet of 12-24 problems (about 1.5 KB). All randomness comes from one
``random.Random(seed)``, so the same seed gives byte-identical text on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

from acodm.data.corpus import Document
from acodm.data.sources.base import Source, SourceOptions

GENERATOR_VERSION = 1
LABEL = f"acodm-math-v{GENERATOR_VERSION}"
Problem = tuple[str, str]
NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi",
         "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq")  # fmt: skip
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cupcakes", "tickets", "stamps")


def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _num(x: Fraction) -> str:
    """Exact decimal when there is one (87.8), else a fraction (45/7)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return _frac(x)
    digits = 0
    while 10**digits % x.denominator:
        digits += 1
    whole, part = divmod(abs(x.numerator) * 10**digits // x.denominator, 10**digits)
    text = f"{whole}.{part:0{digits}d}" if digits else str(whole)
    return ("-" if x < 0 else "") + text


def _p(n: int) -> str:
    """A number as an operand: negatives in parentheses, ``4 * (-8)``."""
    return f"({n})" if n < 0 else str(n)


def _poly(terms: list[tuple[int, str]]) -> str:
    """``[(2, "x"), (-1, "y"), (3, "")]`` -> ``2x - y + 3``: no ``1x``, no ``+ 0``."""
    out = ""
    for coef, var in terms:
        if coef == 0:
            continue
        mag = abs(coef)
        body = f"{'' if mag == 1 and var else mag}{var}"
        sign = "-" if coef < 0 else "+"
        out += f" {sign} {body}" if out else ("-" if coef < 0 else "") + body
    return out or "0"


def arithmetic(r: random.Random) -> Problem:
    a, b = r.randint(2, 999), r.randint(2, 999)
    op = r.choice("+-*/")
    if op == "/":
        b = r.randint(2, 40)
        a = b * r.randint(2, 60)
        return f"What is {a} / {b}?", f"{a} / {b} = {a // b}"
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {result}"


def order_of_operations(r: random.Random) -> Problem:
    a, b, c, d = (r.randint(1, 12) for _ in range(4))
    expr = f"{a} + {b} * ({c} - {d})"
    inner = c - d
    return (f"Evaluate {expr}.",
            f"First the parentheses: {c} - {d} = {inner}. Then {b} * {_p(inner)} = {b * inner}. "
            f"Finally {a} + {_p(b * inner)} = {a + b * inner}.")  # fmt: skip


def fractions(r: random.Random) -> Problem:
    x = Fraction(r.randint(1, 9), r.randint(2, 12))
    y = Fraction(r.randint(1, 9), r.randint(2, 12))
    op = r.choice("+-*")
    result = {"+": x + y, "-": x - y, "*": x * y}[op]
    return (f"Compute {_frac(x)} {op} {_frac(y)} and simplify.",
            f"{_frac(x)} {op} {_frac(y)} = {_frac(result)}")  # fmt: skip


def percentage(r: random.Random) -> Problem:
    p, base = r.choice((5, 10, 12, 15, 20, 25, 30, 40, 50, 75)), r.randint(2, 80) * 20
    value = Fraction(p * base, 100)
    return f"What is {p}% of {base}?", f"{p}% of {base} = {p}/100 * {base} = {_num(value)}"


def linear_equation(r: random.Random) -> Problem:
    a, x = r.choice([i for i in range(-9, 10) if i not in (0, 1)]), r.randint(-20, 20)
    b = r.choice([i for i in range(-30, 31) if i])
    c = a * x + b
    return (f"Solve for x: {_poly([(a, 'x'), (b, '')])} = {c}.",
            f"{'Subtract' if b > 0 else 'Add'} {abs(b)} {'from' if b > 0 else 'to'} both sides: "
            f"{a}x = {c - b}. Divide by {_p(a)}: x = {x}.")  # fmt: skip


def quadratic(r: random.Random) -> Problem:
    p, q = r.randint(-9, 9), r.randint(-9, 9)
    p, q = min(p, q), max(p, q)
    factors = "".join("x" if v == 0 else f"({_poly([(1, 'x'), (-v, '')])})" for v in (p, q))
    answer = " or ".join(f"x = {v}" for v in sorted({p, q}))
    return (f"Solve {_poly([(1, 'x^2'), (-(p + q), 'x'), (p * q, '')])} = 0.",
            f"Factor: {factors} = 0, so {answer}.")  # fmt: skip


def linear_system(r: random.Random) -> Problem:
    x, y = r.randint(-10, 10), r.randint(-10, 10)
    a, b, c, d = (r.choice([i for i in range(-6, 7) if i]) for _ in range(4))
    while a * d - b * c == 0:
        d = r.choice([i for i in range(-6, 7) if i])
    return (f"Solve the system: {_poly([(a, 'x'), (b, 'y')])} = {a * x + b * y} and "
            f"{_poly([(c, 'x'), (d, 'y')])} = {c * x + d * y}.",
            f"x = {x}, y = {y}.")  # fmt: skip


def sequence(r: random.Random) -> Problem:
    start = r.randint(-20, 20)
    if r.random() < 0.5:
        step = r.choice([i for i in range(-9, 10) if i])
        terms = [start + i * step for i in range(5)]
        rule = f"an arithmetic sequence with common difference {step}"
        nxt = terms[-1] + step
    else:
        start = r.choice([i for i in range(-5, 6) if i])
        ratio = r.choice((-3, -2, 2, 3, 4))
        terms = [start * ratio**i for i in range(5)]
        rule = f"a geometric sequence with common ratio {ratio}"
        nxt = terms[-1] * ratio
    shown = ", ".join(map(str, terms))
    return f"What is the next term of {shown}, ...?", f"It is {rule}, so the next term is {nxt}."


UNITS = (("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
         ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("feet", "inches", 12),
         ("days", "hours", 24), ("yards", "feet", 3), ("minutes", "seconds", 60))  # fmt: skip


def unit_conversion(r: random.Random) -> Problem:
    if r.random() < 0.2:
        c = r.randint(-40, 100)
        f = Fraction(9, 5) * c + 32
        return f"Convert {c} degrees Celsius to Fahrenheit.", f"F = 9/5 * {_p(c)} + 32 = {_num(f)}"
    big, small, factor = r.choice(UNITS)
    n = r.randint(2, 250)
    if r.random() < 0.5:
        return f"How many {small} are in {n} {big}?", f"{n} * {factor} = {n * factor} {small}"
    return f"Convert {n * factor} {small} to {big}.", f"{n * factor} / {factor} = {n} {big}"


def divisibility(r: random.Random) -> Problem:
    kind = r.choice(("gcd", "lcm", "factor"))
    if kind == "factor":
        n = r.choice((2, 3, 5, 7)) * r.choice((2, 3, 5, 7, 11, 13)) * r.randint(2, 30)
        factors, m, p = [], n, 2
        while m > 1:
            while m % p == 0:
                factors.append(p)
                m //= p
            p += 1
        return f"Write {n} as a product of primes.", f"{n} = " + " * ".join(map(str, factors))
    a, b = r.randint(4, 120), r.randint(4, 120)
    g = _gcd(a, b)
    if kind == "gcd":
        return f"Find the greatest common divisor of {a} and {b}.", f"gcd({a}, {b}) = {g}"
    return f"Find the least common multiple of {a} and {b}.", f"lcm({a}, {b}) = {a * b // g}"


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def statistics(r: random.Random) -> Problem:
    values = [r.randint(1, 50) for _ in range(r.choice((5, 6, 7)))]
    ordered = sorted(values)
    mean = Fraction(sum(values), len(values))
    n = len(ordered)
    middle = ordered[n // 2 - 1 : n // 2 + 1] if n % 2 == 0 else [ordered[n // 2]]
    median = Fraction(sum(middle), len(middle))
    return (f"Find the mean and median of {', '.join(map(str, values))}.",
            f"Sorted: {', '.join(map(str, ordered))}. Mean = {sum(values)}/{n}"
            f"{'' if _num(mean) == f'{sum(values)}/{n}' else ' = ' + _num(mean)}; "
            f"median = {_num(median)}.")  # fmt: skip


def geometry(r: random.Random) -> Problem:
    w, h = r.randint(2, 40), r.randint(2, 40)
    shape = r.choice(("rectangle", "triangle", "right triangle"))
    if shape == "rectangle":
        return (f"A rectangle is {w} cm by {h} cm. Find its area and perimeter.",
                f"Area = {w} * {h} = {w * h} cm^2; "
                f"perimeter = 2 * ({w} + {h}) = {2 * (w + h)} cm.")  # fmt: skip
    if shape == "triangle":
        return (f"A triangle has base {w} m and height {h} m. What is its area?",
                f"Area = 1/2 * {w} * {h} = {_num(Fraction(w * h, 2))} m^2.")  # fmt: skip
    m, n = r.randint(2, 6), r.randint(1, 5)
    m, n = max(m, n + 1), min(n, m - 1)
    a, b, c = m * m - n * n, 2 * m * n, m * m + n * n
    return (f"A right triangle has legs {a} and {b}. How long is the hypotenuse?",
            f"c = sqrt({a}^2 + {b}^2) = sqrt({a * a + b * b}) = {c}.")  # fmt: skip


def word_problem(r: random.Random) -> Problem:
    name, other = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    kind = r.choice(("share", "buy", "rate"))
    if kind == "share":
        k, per = r.randint(2, 9), r.randint(2, 15)
        return (f"{name} has {k * per} {item} and shares them equally among {k} friends. "
                f"How many does each friend get?",
                f"{k * per} / {k} = {per} {item} each.")  # fmt: skip
    if kind == "buy":
        n, cents = r.randint(2, 12), r.randint(25, 400)
        total = n * cents
        return (f"{name} buys {n} {item} at ${cents // 100}.{cents % 100:02d} each. "
                f"What is the total cost?", f"{n} * ${cents // 100}.{cents % 100:02d} = "
                f"${total // 100}.{total % 100:02d}")  # fmt: skip
    speed, hours = r.randint(3, 90), r.randint(2, 9)
    return (f"{name} and {other} travel at {speed} km/h for {hours} hours. How far do they go?",
            f"distance = speed * time = {speed} * {hours} = {speed * hours} km.")  # fmt: skip


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (
    arithmetic, order_of_operations, fractions, percentage, linear_equation, quadratic,
    linear_system, sequence, unit_conversion, divisibility, statistics, geometry, word_problem,
)  # fmt: skip


def worksheet(r: random.Random) -> str:
    """12-24 problems drawn from 2-4 topics, as numbered question/answer pairs."""
    topics = r.sample(GENERATORS, r.randint(2, 4))
    parts = []
    for i in range(1, r.randint(12, 24) + 1):
        question, answer = r.choice(topics)(r)
        parts.append(f"Problem {i}. {question}\nAnswer: {answer}")
    return "\n\n".join(parts)


def generate(n_documents: int, seed: int) -> Iterator[str]:
    """``n_documents`` worksheets; one ``random.Random(seed)`` drives everything."""
    r = random.Random(seed)
    for _ in range(n_documents):
        yield worksheet(r)


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    for i, text in enumerate(generate(options.math_documents, options.seed)):
        yield Document(text, "math", LABEL, f"math/{LABEL}/seed{options.seed}/{i:06d}")


GENERATED = Source("math", "generated-math", LABEL, extract)
SOURCES = (GENERATED,)
