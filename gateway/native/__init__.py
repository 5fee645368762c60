"""The compiled request path: `switchyard compile` builds the hot modules with mypyc
(build.py); the loader uses them only while they match the sources (loader.py).
"""
