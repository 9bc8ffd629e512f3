"""The `accuracy` reward on a table of math answer forms, each with its exact reward.

The forms come from public math-answer test suites (math-verify's own tests: LaTeX notations,
fractions, roots, intervals, sets, percentages, thousands separators, currency, units) and the
answer styles of MATH (LaTeX answers, solutions ending in ``\\boxed{}``) and GSM8K (worked
solutions ending in ``#### 72``, plain numbers). Correct forms score 1; wrong ones, hedges (several
values where the gold is one) and restated questions (an expression for a numeric gold) score 0.
The whole table is also scored through the shipped ``rewards=math`` config, as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rewards import REGISTRY

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
MATH_SOLUTION = r"We have $2+5+1 = \boxed{8}$."

# (completion, gold, expected reward)
FORMS: list[tuple[str, Any, float]] = [
    # ---- fractions: \frac, \dfrac, \tfrac, \cfrac, malformed \frac13, a/b, unreduced, mixed
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\dfrac{1}{3}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\tfrac{1}{3}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\cfrac{1}{3}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\frac13}", r"\frac{1}{3}", 1.0),
    (r"\boxed{1/3}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\frac{2}{6}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\dfrac{1}{3}", 1.0),
    (r"\boxed{\frac{1}{3}}", "1/3", 1.0),
    (r"\boxed{0.3333333}", r"\frac{1}{3}", 1.0),  # math-verify compares to 6 decimals
    (r"\boxed{0.33}", r"\frac{1}{3}", 0.0),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{3}", 0.0),
    (r"\boxed{\frac{1}{2}}", r"\dfrac{1}{3}", 0.0),
    (r"\boxed{\frac{3}{1}}", r"\frac{1}{3}", 0.0),
    (r"\boxed{-\frac{7}{4}}", r"-\frac{7}{4}", 1.0),
    (r"\boxed{\frac{-7}{4}}", r"-\frac{7}{4}", 1.0),
    (r"\boxed{-1.75}", r"-\frac{7}{4}", 1.0),
    (r"\boxed{\frac{7}{4}}", r"-\frac{7}{4}", 0.0),
    (r"\boxed{1\frac{3}{4}}", r"\frac{7}{4}", 1.0),  # a mixed number
    (r"\boxed{\frac{14}{3}}", r"\frac{14}{3}", 1.0),
    (r"\boxed{4\frac{2}{3}}", r"\frac{14}{3}", 1.0),
    (r"\boxed{\frac{10}{9}}", "10/9", 1.0),
    (r"\boxed{-\frac{10}{9}}", "-10/9", 1.0),
    (r"\boxed{\frac{63}{400}}", r"\frac{63}{400}", 1.0),
    (r"\boxed{\frac{64}{400}}", r"\frac{63}{400}", 0.0),
    (r"\boxed{\left( \frac{1}{3} \right)}", r"\frac{1}{3}", 1.0),
    (r"\boxed{k = \frac{1}{3}}", r"\frac{1}{3}", 1.0),
    # ---- roots
    (r"\boxed{\sqrt{3}}", r"\sqrt{3}", 1.0),
    (r"\boxed{\sqrt3}", r"\sqrt{3}", 1.0),
    (r"\boxed{2\sqrt{3}}", r"2\sqrt{3}", 1.0),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1.0),
    (r"\boxed{3\sqrt{2}}", r"2\sqrt{3}", 0.0),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),
    (r"\boxed{\frac{1}{2}\sqrt{3}}", r"\frac{\sqrt{3}}{2}", 1.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{3}}{2}", 0.0),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"\boxed{10\sqrt{2}}", r"10\sqrt{2}", 1.0),
    (r"\boxed{14.14}", r"10\sqrt{2}", 0.0),
    (r"\boxed{\sqrt[3]{2}}", r"\sqrt[3]{2}", 1.0),
    # ---- intervals (math-verify: an inequality gold accepts the interval, not the reverse)
    (r"\boxed{[0, 1)}", "[0,1)", 1.0),
    (r"\boxed{[0,1)}", "[0,1)", 1.0),
    (r"\boxed{(0, 1)}", "[0,1)", 0.0),
    (r"\boxed{[0, 9)}", "[0,1)", 0.0),
    (r"\boxed{(-\infty, 3]}", r"(-\infty, 3]", 1.0),
    (r"\boxed{\left(-\infty, 3\right]}", r"(-\infty, 3]", 1.0),
    (r"\boxed{(-\infty, 3)}", r"(-\infty, 3]", 0.0),
    (r"\boxed{(-\infty, -2) \cup (3, \infty)}", r"(-\infty,-2)\cup(3,\infty)", 1.0),
    (r"\boxed{(3, \infty) \cup (-\infty, -2)}", r"(-\infty,-2)\cup(3,\infty)", 1.0),
    (r"\boxed{(-\infty, -2) \cup [3, \infty)}", r"(-\infty,-2)\cup(3,\infty)", 0.0),
    (r"\boxed{(-\infty, 3]}", r"x \le 3", 1.0),
    (r"\boxed{x \le 3}", r"(-\infty, 3]", 0.0),
    # ---- sets, and MATH's "1, 2" for several solutions
    (r"\boxed{\{1, 2\}}", r"\{1,2\}", 1.0),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0),
    (r"\boxed{\{1, 2, 3\}}", r"\{1,2\}", 0.0),
    (r"\boxed{1, 2}", r"\{1,2\}", 1.0),
    (r"\boxed{2, 1}", "1, 2", 1.0),
    (r"\boxed{-2, 3}", "3, -2", 1.0),
    (r"\boxed{1}", "1, 2", 0.0),
    (r"\boxed{\{1,2,3,4\}}", r"\{1,3\} \cup \{2,4\}", 1.0),
    # ---- thousands separators: 14{,}916 (MATH), 10,\!000, 1,234 (GSM8K), thin spaces
    (r"\boxed{14{,}916}", "14916", 1.0),
    (r"\boxed{14916}", "14{,}916", 1.0),
    (r"\boxed{14{,}916}", "14{,}916", 1.0),
    (r"\boxed{14,916}", "14916", 1.0),
    (r"\boxed{14\,916}", "14916", 1.0),
    (r"\boxed{10,\!000}", "10000", 1.0),
    (r"\boxed{1\,000\,000}", "1000000", 1.0),
    (r"\boxed{14{,}912}", "14916", 0.0),
    ("The total is 1,234,567.", "1234567", 1.0),
    ("She earns $1,200 a week.", "1200", 1.0),
    (r"\boxed{1234}", "#### 1,234", 1.0),
    # ---- currency
    (r"\boxed{\$18}", "18", 1.0),
    (r"\boxed{\$18.00}", "18", 1.0),
    (r"\boxed{18\text{ dollars}}", "18", 1.0),
    (r"\boxed{\$18.90}", r"\$18.90", 1.0),
    (r"\boxed{18.9}", r"\$18.90", 1.0),
    (r"\boxed{\$19}", "18", 0.0),
    ("The answer is $18.", "18", 1.0),
    ("<answer>$18</answer>", "18", 1.0),
    ("She paid $5 and got $3 back", "3", 1.0),
    # ---- numbers in \text{} and other font commands
    (r"\boxed{\text{18}}", "18", 1.0),
    (r"\boxed{\textbf{18}}", "18", 1.0),
    (r"\boxed{\mathrm{18}}", "18", 1.0),
    (r"\boxed{\text{19}}", "18", 0.0),
    # ---- words and multiple choice
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", 1.0),
    (r"\boxed{\text{Briana}}", r"\text{Evelyn}", 0.0),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", 1.0),
    (r"\boxed{C}", r"\text{(C)}", 1.0),
    (r"\boxed{\text{(D)}}", r"\text{(C)}", 0.0),
    # ---- powers: a power gold takes any equal form; a number gold takes only a number
    (r"\boxed{2^{10}}", "2^{10}", 1.0),
    (r"\boxed{1024}", "2^{10}", 1.0),
    (r"\boxed{4^5}", "2^{10}", 1.0),
    (r"\boxed{2^{11}}", "2^{10}", 0.0),
    (r"\boxed{2^{10}}", "1024", 0.0),  # the question restated
    (r"\boxed{10^6}", "1000000", 1.0),  # a power of ten is how large numbers are written
    (r"\boxed{2.5 \times 10^{3}}", "2500", 1.0),  # scientific notation
    (r"\boxed{3.91 \times 10^{2}}", "391", 1.0),
    (r"\boxed{x^2+7x+10}", "x^2+7x+10", 1.0),
    (r"\boxed{x^2+7x+11}", "x^2+7x+10", 0.0),
    # ---- pi
    (r"\boxed{\pi}", r"\pi", 1.0),
    (r"\boxed{3.14}", r"\pi", 0.0),
    (r"\boxed{3\pi}", r"3\pi", 1.0),
    (r"\boxed{\pi \cdot 3}", r"3\pi", 1.0),
    (r"\boxed{4\pi}", r"3\pi", 0.0),
    (r"\boxed{\frac{\pi}{2}}", r"\frac{\pi}{2}", 1.0),
    (r"\boxed{\frac{1}{2}\pi}", r"\frac{\pi}{2}", 1.0),
    (r"\boxed{90^\circ}", r"\frac{\pi}{2}", 0.0),
    # ---- tuples and points: order matters
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \frac{\pi}{2})", 1.0),
    (r"\boxed{(\frac{\pi}{2}, 3)}", r"(3, \frac{\pi}{2})", 0.0),
    (r"\boxed{(1, -2)}", "(1,-2)", 1.0),
    (r"\boxed{(-2, 1)}", "(1,-2)", 0.0),
    (r"\boxed{(1,2,3)}", "(1,2,3)", 1.0),
    (r"\boxed{(1,3,2)}", "(1,2,3)", 0.0),
    # ---- percent (math-verify's rule: 28% is both 28 and 0.28)
    (r"\boxed{28\%}", r"28\%", 1.0),
    (r"\boxed{28}", r"28\%", 1.0),
    (r"\boxed{0.28}", r"28\%", 1.0),
    ("That is 28 percent", r"28\%", 1.0),
    (r"\boxed{29\%}", r"28\%", 0.0),
    ("It went up by 50%.", "0.5", 1.0),
    (r"\boxed{50\%}", "50", 1.0),
    # ---- degrees and units
    (r"\boxed{90^\circ}", "90", 1.0),
    (r"\boxed{90^{\circ}}", "90", 1.0),
    (r"\boxed{90}", r"90^\circ", 1.0),
    (r"\boxed{90^\circ}", r"90^\circ", 1.0),
    (r"\boxed{45^\circ}", r"90^\circ", 0.0),
    (r"\boxed{90\text{ degrees}}", "90", 1.0),
    (r"\boxed{5\text{ cm}}", "5", 1.0),
    (r"\boxed{5 \text{ cm}^2}", "5", 1.0),
    (r"\boxed{12 \mbox{ inches}}", "12", 1.0),
    (r"\boxed{6 \text{ cm}}", "5", 0.0),
    ("The answer is 42 apples.", "42", 1.0),
    ("<answer>42 apples</answer>", "42", 1.0),
    (r"\boxed{\frac{1}{2}\text{ cup}}", r"\frac{1}{2}", 1.0),
    # ---- negative numbers
    (r"\boxed{-5}", "-5", 1.0),
    (r"\boxed{- 5}", "-5", 1.0),
    (r"\boxed{-5}", "5", 0.0),
    (r"\boxed{5}", "-5", 0.0),
    ("\\boxed{\u22125}", "-5", 1.0),  # U+2212, the minus sign
    ("the temperature fell to \u221212 degrees", "-12", 1.0),
    (r"\boxed{-0.25}", r"-\frac{1}{4}", 1.0),
    # ---- decimals and fractions
    (r"\boxed{0.75}", r"\frac{3}{4}", 1.0),
    (r"\boxed{.75}", "0.75", 1.0),
    (r"\boxed{0.750}", "0.75", 1.0),
    (r"\boxed{0.76}", r"\frac{3}{4}", 0.0),
    (r"\boxed{2.5}", r"\frac{5}{2}", 1.0),
    (r"\boxed{\frac{5}{2}}", "2.5", 1.0),
    (r"\boxed{2\frac{1}{2}}", "2.5", 1.0),
    (r"\boxed{12.50}", "12.5", 1.0),
    (r"\boxed{391.0}", "391", 1.0),
    ("It costs 3.5 dollars", "3.5", 1.0),
    # ---- answers without a box: LaTeX spans in running text, answer tags, phrases
    (r"Therefore $x = \frac{1}{3}$.", r"\frac{1}{3}", 1.0),
    (r"we get \(k = \frac{1}{3}\)", r"\frac{1}{3}", 1.0),
    (r"Answer \[ 9 \]", "9", 1.0),
    ("$$\n9\n$$", "9", 1.0),
    ("Thus $2+5+1 = 8$ apples.", "8", 1.0),
    ("so the answer is $x^2$", "2", 0.0),
    (r"<answer>\frac{1}{2}</answer>", "0.5", 1.0),
    (r"<answer>\dfrac{1}{3}</answer>", r"\frac{1}{3}", 1.0),
    (r"The final answer is $\frac{63}{400}$. I hope it is correct.", r"\frac{63}{400}", 1.0),
    (r"Final Answer: The final answer is $28 \%$. I hope it is correct.", r"28\%", 1.0),
    ("The answer is 0.3", r"\frac{63}{400}", 0.0),
    # ---- golds as datasets give them: GSM8K solutions, MATH solutions, delimited LaTeX, numbers
    (r"\boxed{72}", GSM8K_SOLUTION, 1.0),
    ("#### 72", GSM8K_SOLUTION, 1.0),
    ("The answer is 71", GSM8K_SOLUTION, 0.0),
    (r"\boxed{8}", MATH_SOLUTION, 1.0),
    (r"\boxed{9}", MATH_SOLUTION, 0.0),
    (r"\boxed{0.5}", r"$\frac{1}{2}$", 1.0),
    (r"\boxed{0.5}", r"\(\frac{1}{2}\)", 1.0),
    (r"\boxed{72}", 72, 1.0),
    (r"\boxed{72}", 72.0, 1.0),
    (r"\boxed{0.25}", 0.25, 1.0),
    # ---- hedges: several values where the gold is one score 0, even with the gold among them
    (r"\boxed{391}", "391", 1.0),
    (r"\boxed{x = 391}", "391", 1.0),
    (r"The final answer is $391$. I hope it is correct.", "391", 1.0),
    (r"\boxed{390, 391}", "391", 0.0),
    (r"\boxed{390 \text{ or } 391}", "391", 0.0),
    (r"\boxed{390 \text{or} 391}", "391", 0.0),
    (r"\boxed{390 or 391}", "391", 0.0),
    (r"\boxed{391 \text{ and } 390}", "391", 0.0),
    (r"\boxed{\{390, 391\}}", "391", 0.0),
    (r"\boxed{[390, 391]}", "391", 0.0),
    (r"\boxed{(390, 391)}", "391", 0.0),
    (r"\boxed{390 \le x \le 391}", "391", 0.0),
    (r"\boxed{390 < x \leq 391}", "391", 0.0),
    (r"\boxed{x \geq 391}", "391", 0.0),
    (r"\boxed{x \in \{390, 391\}}", "391", 0.0),
    (r"\boxed{\pm 391}", "391", 0.0),
    (r"\boxed{x = 390, 391}", "391", 0.0),
    (r"\boxed{x = 390 \text{ or } x = 391}", "391", 0.0),
    (r"\boxed{390} or \boxed{391}", "391", 0.0),
    ("The answer is $390$ or $391$.", "391", 0.0),
    ("<answer>390 or 391</answer>", "391", 0.0),
    ("<answer>390, 391</answer>", "391", 0.0),
    (r"\boxed{\frac{1}{3}, \frac{1}{2}}", r"\frac{1}{2}", 0.0),
    # ---- restated questions: an expression is not the number a numeric gold asks for
    (r"\boxed{17*23}", "391", 0.0),
    (r"\boxed{17 \times 23}", "391", 0.0),
    (r"\boxed{17 \cdot 23}", "391", 0.0),
    (r"\boxed{17(23)}", "391", 0.0),
    (r"\boxed{400 - 9}", "391", 0.0),
    (r"\boxed{\sqrt{152881}}", "391", 0.0),
    ("<answer>17*23</answer>", "391", 0.0),
    ("The answer is 17*23.", "391", 0.0),
    (r"\boxed{x = 17 \times 23}", "391", 0.0),
    (r"\boxed{17 \cdot 23 = 391}", "391", 1.0),  # the work, then the number
    (r"\boxed{1 - \frac{2}{3}}", r"\frac{1}{3}", 0.0),
    (r"\boxed{12+34}", "46", 0.0),
    # ---- not applicable: a gold with no math in it
    (r"\boxed{5}", "not a number at all", None),
    ("anything", "", None),
]


def test_the_table_is_large_and_balanced() -> None:
    # Guards the table against shrinking into something that cannot catch a regression.
    scores = [expected for _, _, expected in FORMS]
    assert len(FORMS) >= 150
    assert scores.count(1.0) >= 80 and scores.count(0.0) >= 50


@pytest.mark.parametrize(("completion", "gold", "expected"), FORMS)
def test_answer_form(completion: str, gold: Any, expected: float | None) -> None:
    conversational = [{"role": "assistant", "content": completion}]
    assert REGISTRY["accuracy"]([completion, conversational], solution=[gold, gold]) == [
        expected, expected]


@pytest.mark.parametrize(
    ("completion", "gold"),
    [(r"\boxed{2^{10}}", "1024"), (r"\boxed{17 \times 23}", "391"), (r"\boxed{400 - 9}", "391")],
)
def test_literal_false_pays_any_equal_expression(completion: str, gold: str) -> None:
    # The opt-out, for tasks where an unevaluated expression is a fine answer to a numeric gold.
    assert REGISTRY["accuracy"]([completion], solution=[gold]) == [0.0]
    assert REGISTRY["accuracy"]([completion], solution=[gold], literal=False) == [1.0]
    # Hedges stay hedges either way.
    assert REGISTRY["accuracy"]([r"\boxed{390, 391}"], solution=["391"], literal=False) == [0.0]


def test_shipped_math_config_scores_the_table(tmp_path: Path) -> None:
    """The table through the reward bench with the shipped ``rewards=math``, as a user runs it."""
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as f:
        for i, (completion, gold, _) in enumerate(FORMS):
            f.write(json.dumps({"prompt": f"q{i}", "completion": completion, "solution": gold}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "rewards", "score", "samples.jsonl", "rewards=math",
         "+trainer.max_completion_length=256", "--out", "scored.jsonl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    with (tmp_path / "scored.jsonl").open() as f:
        scored = [json.loads(line)["rewards/accuracy"] for line in f]
    expected = [e for _, _, e in FORMS]
    wrong = [(FORMS[i][0], FORMS[i][1], s) for i, (s, e) in enumerate(zip(scored, expected))
             if s != e]
    assert not wrong
