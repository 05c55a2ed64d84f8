"""The audio files under a folder, and every other file left out with the reason (nothing is
dropped silently): files of other kinds, names that are not valid UTF-8, and directories reached
again through a symlink loop."""

import os
import pathlib

from maepp.audio.decode import AUDIO_EXTENSIONS


def _printable(path: str) -> str:
    """The path as it can be printed: bytes that are not UTF-8 written \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes of bytes that are not UTF-8
        return True


def _not_audio(name: str) -> str:
    extension = os.path.splitext(name)[1].lower()
    return f"not an audio file maepp reads ({extension or 'no extension'}); it reads {', '.join(AUDIO_EXTENSIONS)}"


def _remote_audio_files(root: str) -> tuple:
    """Audio files under a gs:// (or other tf.io.gfile) folder, relative to it, and the others."""
    import tensorflow as tf

    files, left_out = [], {}
    for directory, _, names in tf.io.gfile.walk(root):
        relative_dir = directory[len(root.rstrip("/")) + 1 :]
        for name in names:
            relative = os.path.join(relative_dir, name)
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                files.append(relative)
            else:
                left_out[relative] = _not_audio(name)
    return sorted(files), left_out


def list_audio_files(root) -> tuple:
    """-> (relative paths of the audio files under root, sorted; {printable path: reason} of the
    ones left out). Local folders: follows symlinks, each directory once; others: tf.io.gfile."""
    if "://" in str(root):
        return _remote_audio_files(str(root))
    root = pathlib.Path(root)
    files, left_out, seen = [], {}, set()
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        relative_dir = os.path.relpath(directory, root)
        if real in seen:
            left_out[_printable(relative_dir)] = f"a symlink loop: {relative_dir} leads back to a folder already read"
            subdirectories.clear()
            continue
        seen.add(real)
        for name in names:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if _undecodable(relative):
                left_out[_printable(relative)] = "the file name is not valid UTF-8; rename it to include it"
            elif os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                left_out[_printable(relative)] = _not_audio(name)
            elif os.path.isfile(os.path.join(directory, name)):
                files.append(relative)
    return sorted(files), left_out
