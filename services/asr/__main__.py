"""``python -m services.asr``: run the ASR worker."""

from services.asr.worker import main

if __name__ == "__main__":
    main()
