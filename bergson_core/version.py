"""The project's version, declared here only: pyproject.toml reads it (setuptools dynamic version),
the code version in every index spec and cache key is it (config.CODE_VERSION), and the
deployments in deployments/prefect.yaml carry it (a test checks they agree).

Bump it when stored gradients or statistics would change for the same spec."""

__version__ = "0.1.0"
