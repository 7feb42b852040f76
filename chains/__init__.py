"""Chain adapters: Bitcoin, Ethereum, Solana. Pure building/decoding beside node clients."""
