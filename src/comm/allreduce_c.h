/* C API of detinfer's deterministic all-reduce (see comm/allreduce.h for the contract).
 * Every function returns 0 on success or a nonzero code; detinfer_ar_last_error() then gives the
 * message (per thread). Device pointers are void*; streams are cudaStream_t passed as void*. */
#ifndef DETINFER_COMM_ALLREDUCE_C_H
#define DETINFER_COMM_ALLREDUCE_C_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct detinfer_ar_comm detinfer_ar_comm; /* opaque */

enum { DETINFER_AR_F32 = 0, DETINFER_AR_BF16 = 1, DETINFER_AR_F16 = 2 };
enum { DETINFER_AR_AUTO = 0, DETINFER_AR_ONESHOT = 1, DETINFER_AR_TWOSHOT = 2, DETINFER_AR_NCCL_DET = 3, DETINFER_AR_NCCL = 4 };
enum { DETINFER_AR_RANK_ORDER = 0, DETINFER_AR_TREE = 1 };
enum { DETINFER_AR_OK = 0, DETINFER_AR_ERROR = 1 };

/* One process per GPU; reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and the
 * DETINFER_AR_* options from the environment. */
int detinfer_ar_create_from_env(detinfer_ar_comm** comm);
/* One process driving ndev ranks, rank i on devices[i] (devices may repeat: virtual ranks).
 * Fills comms[0..ndev). */
int detinfer_ar_create_local(int ndev, const int* devices, detinfer_ar_comm** comms);
int detinfer_ar_destroy(detinfer_ar_comm* comm);

/* order: DETINFER_AR_RANK_ORDER or DETINFER_AR_TREE; algo: DETINFER_AR_AUTO or a forced one. */
int detinfer_ar_all_reduce(detinfer_ar_comm* comm, const void* in, void* out, size_t count, int dtype, int order,
                           int algo, void* stream);
/* Reports an error a kernel recorded (peer timeout, mismatched calls). */
int detinfer_ar_check(detinfer_ar_comm* comm);
/* Waits for the stream (bounded by the timeout), then checks. */
int detinfer_ar_synchronize(detinfer_ar_comm* comm, void* stream);
int detinfer_ar_rank(const detinfer_ar_comm* comm);
int detinfer_ar_world_size(const detinfer_ar_comm* comm);
const char* detinfer_ar_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
