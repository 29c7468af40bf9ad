"""The control service: sole writer of the kill switch, behind REST (and later Telegram commands)."""
