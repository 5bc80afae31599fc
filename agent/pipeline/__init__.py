"""The processing core shared by the live agent and ``foreshock agent replay``.

``Pipeline.process(windows)`` takes a batch of windows and returns, per window, its
features, score, fault guess, telemetry body and any alert, plus the events of the batch.
It owns the feature spec, the detector, the per-stream baselines and the decider. No I/O
and no clock: the service around it reads, stores and publishes.

Model choice: an explicit ``detector`` (with ``input_features``, default all features), else
a verified ``bundle`` (:class:`agent.inference.LoadedBundle`), else the bundle configured in
``model.bundle`` (verified with ``model.trusted_keys``), else the newest bundle shipped
under ``models/bundles/foreshock-default/`` (verified with the key shipped beside it; unless
``model.default_bundle = false``), else the model-free :class:`agent.inference.ZScoreDetector`.

Parts: :mod:`agent.pipeline.core` (``Pipeline``), :mod:`agent.pipeline.results`
(``WindowResult``, ``StepOutput``, ``Scored``) and :mod:`agent.pipeline.model_choice`
(the model choice above: ``shipped_bundle``, ``configured_bundle``, the feature spec and
the detector).
"""

from agent.pipeline.core import Lap, Pipeline
from agent.pipeline.model_choice import SHIPPED_KEY, SHIPPED_NAME, shipped_bundle
from agent.pipeline.results import Scored, StepOutput, WindowResult

__all__ = [
    "SHIPPED_KEY",
    "SHIPPED_NAME",
    "Lap",
    "Pipeline",
    "Scored",
    "StepOutput",
    "WindowResult",
    "shipped_bundle",
]
