"""Adapters that plug hero-gym envs into other agent frameworks.

* :mod:`hero_gym.adapters.trl` -- TRL's ``GRPOTrainer(environment_factory=...)``.
* :mod:`hero_gym.serve` / :mod:`hero_gym.remote` -- an HTTP env server (OpenEnv's WebSocket protocol
  plus a plain HTTP+JSON session API) and the matching Gymnasium client.

Each adapter imports its framework lazily, so ``import hero_gym.adapters`` costs nothing. Prime Intellect's
``verifiers`` has no adapter yet (see the README section "Use our envs from another framework").
"""
