"""``python -m services.tts``: run the TTS worker."""

from services.tts.worker import main

if __name__ == "__main__":
    main()
