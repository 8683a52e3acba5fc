"""shield-orchestrator: asynchronous ingestion of text chunks into LightRAG.

Rendered onto the host by the Ansible role orchestrator_workers; deployed.py
holds the deploy-time values, every other module is plain Python.
"""
