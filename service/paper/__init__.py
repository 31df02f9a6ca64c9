"""Paper trading: the account's pure arithmetic, the trading task and its SQLite journal.

May import ``pipeline`` (the signals it trades) and ``metrics``.
"""
