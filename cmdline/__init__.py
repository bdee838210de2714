"""What every console script of codeparrot-ds shares, and nothing else: the one-line argument errors and
argument types (`cmdline.args`), the one logging setup (`cmdline.logs`), and the exit-status convention:

    0  the job or check succeeded
    1  it ran, and a check it makes failed (a preflight problem, a shard that fails verification, a layout
       that does not fit)
    2  the input is unusable (a bad flag, a missing file, a config that contradicts itself): one paragraph
       on stderr naming the value and the fix, before any work starts where it can be checked first

pretrain_gpt.py adds 3 (training aborted on non-finite losses), and a run ended by a signal exits 128 plus
the signal's number, as a shell reports it. Standard library only: the bottom floor, importable by every
package (model/, data_tools/, launch/ included) and before torch."""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_UNUSABLE = 2
