"""The MLflow Model Registry: the champion target model, from the evidence of a counterfactual grid.

    registration = register_champion(counterfactual_run_id, ctx=ctx)
    model = mlflow.pytorch.load_model(registration.uri)     # models:/<experiment>-target@champion
"""
from transfer_core.registry.champion import (CHAMPION, Registration, latest_counterfactual_run, model_name,
                                             read_selection, register_champion)

__all__ = ["CHAMPION", "Registration", "latest_counterfactual_run", "model_name", "read_selection",
           "register_champion"]
