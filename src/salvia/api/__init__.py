"""The wire protocols: SageMaker's JSON control plane, its REST services, and S3."""
