"""The command-line programs: ``python tools/train.py`` from a checkout, or the console scripts
``imgtrainer-train``, ``imgtrainer-predict``, ``imgtrainer-evaluate``, ``imgtrainer-export`` and
``imgtrainer-lr-find`` once the package is installed (setup.cfg). Each program's ``main(argv)``
returns its exit status. Imports go one way: tools -> hooks -> trainer.
"""
