"""``edgeloop replay``: learning curves of the agent's sampling strategies on a labelled dataset.

``trainer.replay.loop.replay`` runs the loop (seed set, then score, pick,
reveal, train) with the live system's code: ``agent.sampling`` picks,
``agent.model.ModelRunner`` scores, ``trainer.train.round.run_round`` trains
and measures. ``trainer.replay.cli`` is the command; docs/replay.md explains it.
"""
