"""bingx_sim: a BingX USDT-M perpetual REST simulator that ccxt cannot tell from BingX (the paper venue)."""
