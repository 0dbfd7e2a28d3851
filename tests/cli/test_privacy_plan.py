"""`aivo-fl privacy-plan`: the table, the recommendation, and one line when out of reach."""

from __future__ import annotations

import json

from tests.cli.conftest import RunCli


def test_plan_for_a_population_recommends_one_rate(run_cli: RunCli) -> None:
    shown = run_cli("privacy-plan", "--target-epsilon", "2", "--rounds", "52", "--population", "50000", "--json")
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    chosen = plan["recommended"]
    assert chosen["epsilon"] <= 2 and chosen["relative_noise"] <= plan["maxRelativeNoise"]
    assert plan["population"] == 50_000 and len(plan["rows"]) >= 3 and plan["populationNeeded"] is None


def test_an_unreachable_target_is_one_line_naming_the_population(run_cli: RunCli) -> None:
    shown = run_cli("privacy-plan", "--target-epsilon", "1", "--population", "500")
    assert shown.returncode == 1
    [verdict] = [line for line in shown.stdout.splitlines() if line.startswith("✗")]
    assert "out of reach for 500 learners: it needs about" in verdict and "eligible learners" in verdict
