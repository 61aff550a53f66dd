"""A FastAPI application on a pgpoolkit AsyncPool: see app.py and README.md."""
