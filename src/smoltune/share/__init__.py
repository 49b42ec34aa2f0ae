"""Sharing a run: the model card written into every adapter / merged-model folder, and publishing a run to the
Hugging Face Hub.

    smoltune push runs/<run> --repo OWNER/NAME [--private] [--revision BRANCH]
"""
