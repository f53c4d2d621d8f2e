"""Training rounds run by the server: the batch trigger and the worker process.

- ``trainer.rounds.trigger.decide(corrected, batch_size, running)``: pure start decision.
- ``trainer.rounds.worker.RoundWorker``: one round at a time in a spawned process,
  with progress, cancel, and completion handed to ``trainer.rounds.pipeline``.
- ``trainer.rounds.jobs.RoundJobs``: rounds as jobs in the store (enqueue, claim with a lease,
  heartbeat, cancel, fenced finish), so a web server, and any number of ``edgeloop worker``
  processes, share them.
"""
