"""Chat with memory: a session (``session``) that starts from a cube's activation memory, recalls
for each turn, answers on the local chat model and saves each exchange as an episode."""
