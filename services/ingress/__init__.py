"""The ingress: TradingView webhooks in, confirmed signals out."""
