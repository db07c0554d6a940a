"""Worker Lambdas: one module per function, each with a thin ``lambda_handler``."""
