"""The notifier: trade events in, Telegram messages out; never in the way of trading."""
