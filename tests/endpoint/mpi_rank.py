"""A real MPI program without a compiler: each rank prints ``rank R of N on HOST``.

Calls the MPI library (Open MPI's ``libmpi.so``, or MPICH's) through ctypes, so that tests
need only the MPI runtime (Debian's ``openmpi-bin``), not ``mpicc`` or mpi4py.
"""

import ctypes
import ctypes.util
import socket
import sys
import time

name = ctypes.util.find_library("mpi") or "libmpi.so.40"
lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
try:  # Open MPI: MPI_COMM_WORLD is the address of a global object
    world = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, "ompi_mpi_comm_world")))
except ValueError:  # MPICH and its ABI: an integer handle
    world = ctypes.c_int(0x44000000)
if lib.MPI_Init(None, None) != 0:
    sys.exit("MPI_Init failed")
rank, size = ctypes.c_int(), ctypes.c_int()
lib.MPI_Comm_rank(world, ctypes.byref(rank))
lib.MPI_Comm_size(world, ctypes.byref(size))
print(f"rank {rank.value} of {size.value} on {socket.gethostname()}", flush=True)
# Every rank's line is out before any rank finalizes, and mpiexec gets a moment to forward
# them: Open MPI's output forwarding can drop the last line of a rank that finalizes while a
# loaded machine is still forwarding it (CI lost two of four lines even after the barrier).
lib.MPI_Barrier(world)
time.sleep(1.0)
lib.MPI_Barrier(world)
lib.MPI_Finalize()
