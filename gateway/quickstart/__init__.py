"""The quick start (`switchyard demo`): simulated backends, a local MLflow server
and the gateway in one command, plus the progressive-rollout demo.
"""
