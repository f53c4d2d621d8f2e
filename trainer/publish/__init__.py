"""Publishing trained models to the fleet: keys, the model registry, the
promotion gate, signed manifests, model file serving and staged rollout.

Entry points (see docs/publishing.md):

- ``trainer.publish.registry.Registry(data_dir)``: every round's model, lineage, publications.
- ``trainer.publish.gate.decide(...)``: the pure promotion gate.
- ``trainer.publish.publisher.Publisher``: sign and announce a registered model.
- ``trainer.publish.rollout.RolloutController``: the configured stages (``trainer.publish.stages``;
  default canary -> fleet), pause/resume/abort, or halt and roll back; progress kept in the registry.
- ``trainer.publish.routes.router`` / ``api_router(...)``: model downloads and the ``/api/models`` API.

Nothing here is imported by the package itself, so ``edgeloop keys`` stays light.
"""
