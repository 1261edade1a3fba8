"""Privacy: secrets and personal data are kept out of memory, found where they are, and masked.

``kinds`` names what is looked for; ``detect`` finds it (detect-secrets, phonenumbers,
python-stdnum); ``policy`` is the ``[privacy]`` table and ``--privacy``; ``guard`` screens every
write and masks recall's results; ``scan`` is ``memos scan``.
"""
