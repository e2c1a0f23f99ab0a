// Stand-in for the CUDA toolkit header under the CPU emulator (see faircalib_emu.h).
#pragma once
#include "faircalib_emu.h"
