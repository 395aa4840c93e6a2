"""Processing jobs: data processing scripts on instances, SageMaker Processing style."""
