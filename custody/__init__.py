"""The broker domain: wallets, transfer and sign requests, the CLI. Holds no keys."""
