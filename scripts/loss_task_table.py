"""Print the loss x task table (Markdown) from the loss registry; docs/configuration.md carries its output."""

from __future__ import annotations

from trainlab.data import TASKS
from trainlab.losses import LOSSES


def loss_task_table() -> str:
    header = "| loss | " + " | ".join(TASKS) + " |"
    rule = "|---|" + "---|" * len(TASKS)
    rows = [
        f"| `{name}` | "
        + " | ".join("yes" if task in entry.tasks else "-" for task in TASKS)
        + " |"
        for name, entry in LOSSES.items()
    ]
    return "\n".join([header, rule, *rows])


if __name__ == "__main__":
    print(loss_task_table())
