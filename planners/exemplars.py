"""Exemplar tasks, one object per task holding its solution in every strategy's own format.

Each strategy's prompt shows worked tasks (few-shot exemplars). To compare strategies fairly, every strategy
shows the *same* tasks, each rendered in that strategy's format: a codified plan for ``rewoo``, ``Plan:`` /
``#E<n> = Tool[input]`` lines for ``rewoo-nl``, a Thought/Action/Observation trajectory for ``react``, numbered
steps and one executor action for ``plan-execute``. Pass ``exemplars=[...]`` to any strategy to replace the
default one; ``tokenomy.benchmarks.world`` renders its generated tasks this way.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Exemplar", "ORVEL"]


@dataclass(frozen=True)
class Exemplar:
    """One worked task in every strategy's format.

    Attributes:
        question: the task.
        program: the codified plan (``rewoo``).
        nl_plan: the plan in ReWOO's paper format (``rewoo-nl``).
        react: the ReAct trajectory, from ``Question:`` to ``Final Answer:``, observations included.
        steps: the numbered-plan steps (``plan-execute``'s planner), without numbers.
        action: the executor's reply for the first step (``plan-execute``'s executor), ``tool[input]``.
    """

    question: str
    program: str
    nl_plan: str
    react: str
    steps: tuple[str, ...]
    action: str

    def numbered(self) -> str:
        return "\n".join(f"{i}. {s}" for i, s in enumerate(self.steps, 1))


# The default exemplar. One, not two: with two, the embedded 135M model copied the second one's entity into most
# plans (5 of 10 plans named an entity of the question; 9 of 10 with this one and the rule on names).
ORVEL = Exemplar(
    question="How many years after Orvel Corp was founded did its founder die?",
    program=('founded = lookup(entity="Orvel Corp", attribute="founded")\n'
             'founder = lookup(entity="Orvel Corp", attribute="founder")\n'
             'died = lookup(entity=founder, attribute="died")\n'
             'years = calc(expression=died + " - " + founded)\nanswer(years)'),
    nl_plan=("Plan: Find the year Orvel Corp was founded.\n#E1 = lookup[Orvel Corp, founded]\n"
             "Plan: Find who founded Orvel Corp.\n#E2 = lookup[Orvel Corp, founder]\n"
             "Plan: Find the year the founder died.\n#E3 = lookup[#E2, died]\n"
             "Plan: Subtract the founding year from the year of death.\n#E4 = calc[#E3 - #E1]"),
    react="""Question: How many years after Orvel Corp was founded did its founder die?
Thought: I need the year Orvel Corp was founded.
Action: lookup[Orvel Corp, founded]
Observation: Orvel Corp was founded in 1921.
Thought: Now who founded it.
Action: lookup[Orvel Corp, founder]
Observation: Orvel Corp was founded by Ada Brel.
Thought: Now the year Ada Brel died.
Action: lookup[Ada Brel, died]
Observation: Ada Brel died in 1969.
Thought: 1969 - 1921.
Action: calc[1969 - 1921]
Observation: 48
Thought: I know the answer
Final Answer: 48""",
    steps=("Look up the year Orvel Corp was founded.", "Look up who founded Orvel Corp.",
           "Look up the year the founder died.", "Subtract the founding year from the year of death."),
    action="lookup[Orvel Corp, founded]",
)
