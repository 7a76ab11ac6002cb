/*
 * A stand-in libnvidia-ml.so.1 for the tests: the real pynvml loads it through
 * LD_LIBRARY_PATH and calls it exactly as it calls NVIDIA's library.
 *
 * What it answers comes from a JSON scenario named by $NVML_STUB_SCENARIO:
 *   {"init": 0,                      return code of nvmlInit (9 = driver not loaded, ...)
 *    "driver_version": "550.54.15",
 *    "cuda_driver_version": 12040,
 *    "count_error": 0,               return code of nvmlDeviceGetCount_v2
 *    "devices": [{"name": "...", "uuid": "GPU-...", "pci_bus_id": "00000000:01:00.0",
 *                 "pci_device_id": 590414046, "memory_total": 85899345920, "cc": [9, 0],
 *                 "mig": [1, 1],       absent: MIG not supported on this GPU
 *                 "max_mig": 7,
 *                 "mig_devices": [{"slot": 0, "uuid": "MIG-...", "gi": 1, "ci": 0,
 *                                  "memory_total": 10737418240,
 *                                  "gi_slices": 1, "ci_slices": 1, "memory_mb": 9984}],
 *                              gi_slices, ci_slices, memory_mb: nvmlDeviceGetAttributes_v2's
 *                              gpuInstanceSliceCount, computeInstanceSliceCount and
 *                              memorySizeMB (MiB) of the MIG device; no gi_slices: the call
 *                              answers NVML_ERROR_NOT_SUPPORTED (ci_slices, memory_mb: 0)
 *                 "fabric": {"state": 2, "status": 0, "completed_after": 2},
 *                              absent: not supported; completed_after: calls until state 3
 *                 "brand": 14,          nvmlBrandType_t (14 NVIDIA, 2 Tesla, 5 GeForce)
 *                 "handle_error": 0,    return code of nvmlDeviceGetHandleByIndex_v2
 *                 "error": 0,           return code of every other query on this GPU
 *                 "event_types": 31,    nvmlDeviceGetSupportedEventTypes (default: SBE, DBE,
 *                                       PState, XID, Clock = 0x1f)
 *                 "ecc": {"uncorrected_volatile": 0, "uncorrected_aggregate": 0,
 *                         "corrected_volatile": 0, "corrected_aggregate": 0},
 *                              absent: ECC not supported (nvmlDeviceGetTotalEccErrors)
 *                 "remapped_rows": {"correctable": 0, "uncorrectable": 0, "pending": 0,
 *                                   "failure": 0},   absent: no row remapper (pre-Ampere)
 *                 "clock_reasons": 0}]}  nvmlDeviceGetCurrentClocksEventReasons bits
 *
 * Events and lost GPUs come at run time from the trigger file named by $NVML_STUB_EVENTS:
 * one JSON object a line, appended by the test while the process under test waits:
 *   {"gpu": 0, "type": 8, "data": 79}   an event (nvmlEventType bits, eventData = the XID)
 *   {"gpu": 0, "lost": 1}               from now on the GPU answers NVML_ERROR_GPU_IS_LOST
 * nvmlEventSetWait_v2 delivers an event only to a set the GPU registered that type with, and
 * returns NVML_ERROR_TIMEOUT when none arrived within the timeout and NVML_ERROR_GPU_IS_LOST once
 * a GPU is lost (as nvml.h documents; so does nvmlDeviceGetHandleByUUID, for any lost GPU);
 * nvmlDeviceRegisterEvents refuses types the GPU does not support (NVML_ERROR_NOT_SUPPORTED).
 * Structures follow nvml.h (nvmlPciInfo_t, nvmlMemory_t, nvmlGpuFabricInfo_t and
 * nvmlGpuFabricInfo_v2_t as in NVIDIA/go-nvml's copies of nvml.h for CUDA 12.2/12.4/12.8).
 *
 * Driver branches (compile with -DNVML_BRANCH=535, 550 or 570; default 550), strict where the
 * real library is:
 *   R535 (nvml.h of CUDA 12.2): no nvmlDeviceGetGpuFabricInfoV symbol, only
 *        nvmlDeviceGetGpuFabricInfo (R525+); no NVML_ERROR_GPU_NOT_FOUND.
 *   R550 (12.4), R570 (12.8): nvmlDeviceGetGpuFabricInfoV takes nvmlGpuFabricInfo_v2_t and
 *        refuses any other `version` (a v1 struct has none: its first bytes are the cluster
 *        UUID) with NVML_ERROR_ARGUMENT_VERSION_MISMATCH.
 * The fabric state is an `unsigned char` (nvmlGpuFabricState_t); the bytes after it are
 * struct padding, which the C ABI leaves unspecified: the stand-in fills them, so a reader
 * that takes the state as a 4-byte int (every nvidia-ml-py declares it c_uint) sees garbage.
 * nvmlDeviceGetAttributes_v2 (every branch: nvml.h since CUDA 11.1) "currently only supports
 * MIG device handles": a full GPU's handle answers NVML_ERROR_NOT_SUPPORTED (nvml.h: "if this
 * query is not supported by the device"; not verified against a real library), a NULL
 * attributes pointer NVML_ERROR_INVALID_ARGUMENT.
 * nvmlInit fails when the driver has no GPU unless NVML_INIT_FLAG_NO_GPUS is passed (nvml.h:
 * "Don't fail nvmlInit() when no GPUs are found"): NVML_ERROR_GPU_NOT_FOUND (28) from R550; the
 * R535 header has no such code, the stand-in answers NVML_ERROR_UNKNOWN there (not verified
 * against a real R535 library).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    OK = 0, UNINITIALIZED = 1, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3, NOT_FOUND = 6,
    INSUFFICIENT_SIZE = 7, TIMEOUT = 10, GPU_IS_LOST = 15, ARGUMENT_VERSION_MISMATCH = 25,
    GPU_NOT_FOUND = 28, UNKNOWN = 999
};

#ifndef NVML_BRANCH
#define NVML_BRANCH 550
#endif
#define NVML_INIT_FLAG_NO_GPUS 1
#define NVML_STRUCT_VERSION(type, ver) (unsigned int)(sizeof(type) | ((ver) << 24U))

/* ---- a small JSON reader: enough for the scenario files ---- */

typedef struct json {
    enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } type;
    double num;
    char *str;
    int n;
    char **keys;
    struct json **items;
} json;

static const char *p;

static void skip(void) { while (*p && isspace((unsigned char)*p)) p++; }

static json *parse_value(void);

static char *parse_string(void) {
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    p++; /* opening quote */
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\' && *p) {
            c = *p++;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (*p) p++;
    out[len] = 0;
    return out;
}

static void push(json *j, char *key, json *item) {
    j->keys = realloc(j->keys, sizeof(char *) * (j->n + 1));
    j->items = realloc(j->items, sizeof(json *) * (j->n + 1));
    j->keys[j->n] = key;
    j->items[j->n++] = item;
}

static json *parse_value(void) {
    json *j = calloc(1, sizeof(json));
    skip();
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        j->type = *p == '{' ? J_OBJ : J_ARR;
        p++;
        skip();
        while (*p && *p != close) {
            char *key = NULL;
            if (j->type == J_OBJ) {
                key = parse_string();
                skip();
                if (*p == ':') p++;
            }
            push(j, key, parse_value());
            skip();
            if (*p == ',') p++;
            skip();
        }
        if (*p) p++;
    } else if (*p == '"') {
        j->type = J_STR;
        j->str = parse_string();
    } else if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
        j->type = J_BOOL;
        j->num = *p == 't';
        p += *p == 't' ? 4 : 5;
    } else if (!strncmp(p, "null", 4)) {
        p += 4;
    } else {
        char *end;
        j->type = J_NUM;
        j->num = strtod(p, &end);
        p = end == p ? p + 1 : end;
    }
    return j;
}

static json *get(json *j, const char *key) {
    if (!j || j->type != J_OBJ) return NULL;
    for (int i = 0; i < j->n; i++)
        if (!strcmp(j->keys[i], key)) return j->items[i];
    return NULL;
}

static long long num(json *j, const char *key, long long fallback) {
    json *v = get(j, key);
    return v && (v->type == J_NUM || v->type == J_BOOL) ? (long long)v->num : fallback;
}

static const char *str(json *j, const char *key, const char *fallback) {
    json *v = get(j, key);
    return v && v->type == J_STR ? v->str : fallback;
}

static json *item(json *arr, int i) {
    return arr && arr->type == J_ARR && i < arr->n ? arr->items[i] : NULL;
}

/* ---- the scenario ---- */

typedef struct device {
    json *spec;
    struct device *parent; /* set on MIG device handles */
} device;

static json *scenario;
static int initialized;
static device gpus[64];
static device migs[64][8];

static int load(void) {
    const char *path = getenv("NVML_STUB_SCENARIO");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return UNKNOWN;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, size + 1);
    if (fread(text, 1, size, f) != (size_t)size) size = 0;
    fclose(f);
    p = text;
    scenario = parse_value();
    return OK;
}

static int device_count(void) {
    json *devices = get(scenario, "devices");
    return devices && devices->type == J_ARR ? devices->n : 0;
}

static int copy_out(const char *value, char *buf, unsigned int length) {
    if (strlen(value) + 1 > length) return INSUFFICIENT_SIZE;
    strcpy(buf, value);
    return OK;
}

/* A GPU's own error, or its parent's for a MIG handle. */
static void refresh(void);
static int any_lost(void);
static int lost[64];

static int dev_error(device *d) {
    if (!initialized) return UNINITIALIZED;
    if (!d || !d->spec) return INVALID_ARGUMENT;
    refresh();
    device *gpu = d->parent ? d->parent : d;
    if (lost[gpu - gpus]) return GPU_IS_LOST;
    return (int)num(gpu->spec, "error", OK);
}

#define CHECK(d)                      \
    do {                              \
        int _rc = dev_error(d);       \
        if (_rc != OK) return _rc;    \
    } while (0)

/* ---- the NVML entry points pynvml calls ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    if (!scenario && load() != OK) return UNKNOWN;
    int rc = (int)num(scenario, "init", OK);
    if (rc != OK) return rc;
    if (device_count() == 0 && !(flags & NVML_INIT_FLAG_NO_GPUS))
        return NVML_BRANCH >= 550 ? GPU_NOT_FOUND : UNKNOWN;
    for (int i = 0; i < device_count() && i < 64; i++) {
        gpus[i].spec = item(get(scenario, "devices"), i);
        gpus[i].parent = NULL;
    }
    initialized++;
    return OK;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return UNINITIALIZED;
    initialized--;
    return OK;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 6: return "Not Found";
    case 9: return "Driver Not Loaded";
    case 11: return "Interrupt request issue";
    case 13: return "Function Not Found";
    case 25: return "Argument version mismatch";
    case 28: return "No GPUs were found";
    case 10: return "Timeout";
    case 15: return "GPU is lost";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return UNINITIALIZED;
    return copy_out(str(scenario, "driver_version", "550.54.15"), version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (!initialized) return UNINITIALIZED;
    *version = (int)num(scenario, "cuda_driver_version", 12040);
    return OK;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return UNINITIALIZED;
    int rc = (int)num(scenario, "count_error", OK);
    if (rc != OK) return rc;
    *count = (unsigned int)device_count();
    return OK;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, device **handle) {
    if (!initialized) return UNINITIALIZED;
    if ((int)index >= device_count()) return INVALID_ARGUMENT;
    int rc = (int)num(gpus[index].spec, "handle_error", OK);
    if (rc != OK) return rc;
    refresh();
    if (lost[index]) return GPU_IS_LOST;
    *handle = &gpus[index];
    return OK;
}

static int any_lost(void) {
    refresh();
    for (int i = 0; i < device_count() && i < 64; i++)
        if (lost[i]) return 1;
    return 0;
}

/* nvml.h: GPU_IS_LOST "if any GPU has fallen off the bus", not only the one asked for. */
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, device **handle) {
    if (!initialized) return UNINITIALIZED;
    if (any_lost()) return GPU_IS_LOST;
    for (int i = 0; i < device_count() && i < 64; i++) {
        if (!strcmp(str(gpus[i].spec, "uuid", ""), uuid)) {
            *handle = &gpus[i];
            return OK;
        }
        json *list = get(gpus[i].spec, "mig_devices"); /* MIG-<uuid> handles too */
        for (int m = 0; list && m < list->n && m < 8; m++)
            if (!strcmp(str(list->items[m], "uuid", ""), uuid)) {
                migs[i][m].spec = list->items[m];
                migs[i][m].parent = &gpus[i];
                *handle = &migs[i][m];
                return OK;
            }
    }
    return NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetName(device *d, char *name, unsigned int length) {
    CHECK(d);
    return copy_out(str(d->spec, "name", "NVIDIA Stub GPU"), name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(device *d, char *uuid, unsigned int length) {
    CHECK(d);
    return copy_out(str(d->spec, "uuid", ""), uuid, length);
}

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

nvmlReturn_t nvmlDeviceGetPciInfo_v3(device *d, nvmlPciInfo_t *pci) {
    CHECK(d);
    memset(pci, 0, sizeof(*pci));
    const char *bus_id = str(d->spec, "pci_bus_id", "00000000:01:00.0");
    snprintf(pci->busId, sizeof(pci->busId), "%s", bus_id);
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%s", bus_id + 4);
    sscanf(bus_id, "%x:%x:%x", &pci->domain, &pci->bus, &pci->device);
    pci->pciDeviceId = (unsigned int)num(d->spec, "pci_device_id", 0);
    return OK;
}

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

nvmlReturn_t nvmlDeviceGetMemoryInfo(device *d, nvmlMemory_t *memory) {
    CHECK(d);
    memory->total = (unsigned long long)num(d->spec, "memory_total", 0);
    memory->used = 0;
    memory->free = memory->total;
    return OK;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(device *d, int *major, int *minor) {
    CHECK(d);
    json *cc = get(d->spec, "cc");
    if (!cc || cc->n < 2) return NOT_SUPPORTED;
    *major = (int)cc->items[0]->num;
    *minor = (int)cc->items[1]->num;
    return OK;
}

nvmlReturn_t nvmlDeviceGetBrand(device *d, int *brand) {
    CHECK(d);
    *brand = (int)num(d->parent ? d->parent->spec : d->spec, "brand", 14); /* 14: NVIDIA */
    return OK;
}

nvmlReturn_t nvmlDeviceGetMigMode(device *d, unsigned int *current, unsigned int *pending) {
    CHECK(d);
    json *mig = get(d->spec, "mig");
    if (!mig || mig->n < 2 || d->parent) return NOT_SUPPORTED;
    *current = (unsigned int)mig->items[0]->num;
    *pending = (unsigned int)mig->items[1]->num;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(device *d, unsigned int *count) {
    CHECK(d);
    if (!get(d->spec, "mig")) return NOT_SUPPORTED;
    *count = (unsigned int)num(d->spec, "max_mig", 7);
    return OK;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(device *d, unsigned int index, device **mig) {
    CHECK(d);
    json *list = get(d->spec, "mig_devices");
    if (index >= (unsigned int)num(d->spec, "max_mig", 7)) return INVALID_ARGUMENT;
    int g = (int)(d - gpus);
    for (int i = 0; list && i < list->n && i < 8; i++) {
        if (num(list->items[i], "slot", i) == (long long)index) {
            migs[g][i].spec = list->items[i];
            migs[g][i].parent = d;
            *mig = &migs[g][i];
            return OK;
        }
    }
    return NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(device *mig, device **parent) {
    CHECK(mig);
    if (!mig->parent) return INVALID_ARGUMENT;
    *parent = mig->parent;
    return OK;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(device *d, unsigned int *id) {
    CHECK(d);
    if (!d->parent) return NOT_SUPPORTED;
    *id = (unsigned int)num(d->spec, "gi", 0);
    return OK;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(device *d, unsigned int *id) {
    CHECK(d);
    if (!d->parent) return NOT_SUPPORTED;
    *id = (unsigned int)num(d->spec, "ci", 0);
    return OK;
}

/* nvml.h (CUDA 11.1 on, the same in go-nvml's newest copy): nvmlDeviceAttributes_t. */
typedef struct {
    unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount,
        sharedEncoderCount, sharedJpegCount, sharedOfaCount;
    unsigned int gpuInstanceSliceCount, computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

nvmlReturn_t nvmlDeviceGetAttributes_v2(device *d, nvmlDeviceAttributes_t *attributes) {
    CHECK(d);
    if (!attributes) return INVALID_ARGUMENT;
    if (!d->parent || !get(d->spec, "gi_slices")) return NOT_SUPPORTED;
    memset(attributes, 0, sizeof(*attributes));
    attributes->gpuInstanceSliceCount = (unsigned int)num(d->spec, "gi_slices", 0);
    attributes->computeInstanceSliceCount = (unsigned int)num(d->spec, "ci_slices", 0);
    attributes->memorySizeMB = (unsigned long long)num(d->spec, "memory_mb", 0);
    return OK;
}

/* nvml.h: typedef unsigned char nvmlGpuFabricState_t; R535 names cliqueId partitionId. */
typedef struct {
    unsigned char clusterUuid[16];
    nvmlReturn_t status;
    uint32_t cliqueId;
    unsigned char state;
} nvmlGpuFabricInfo_t;

typedef struct {
    unsigned int version;
    unsigned char clusterUuid[16];
    nvmlReturn_t status;
    uint32_t cliqueId;
    unsigned char state;
    uint32_t healthMask;
} nvmlGpuFabricInfo_v2_t;

#define PADDING 0xA5 /* unspecified bytes: whatever the library's copy leaves there */

/* A GPU's fabric state and status at this call (registration completes after
 * `completed_after` calls). */
static int fabric_now(device *d, unsigned char *state, nvmlReturn_t *status) {
    CHECK(d);
    json *fabric = get(d->spec, "fabric");
    if (!fabric) return NOT_SUPPORTED;
    static int calls[64];
    int g = (int)(d - gpus);
    long long after = num(fabric, "completed_after", -1);
    calls[g]++;
    *state = after >= 0 && calls[g] > after ? 3 : (unsigned char)num(fabric, "state", 0);
    *status = (nvmlReturn_t)num(fabric, "status", OK);
    return OK;
}

nvmlReturn_t nvmlDeviceGetGpuFabricInfo(device *d, nvmlGpuFabricInfo_t *info) {
    nvmlGpuFabricInfo_t out;
    memset(&out, PADDING, sizeof(out));
    int rc = fabric_now(d, &out.state, &out.status);
    if (rc != OK) return rc;
    memset(out.clusterUuid, 0, sizeof(out.clusterUuid));
    out.cliqueId = 0;
    memcpy(info, &out, sizeof(out));
    return OK;
}

#if NVML_BRANCH >= 550
nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(device *d, nvmlGpuFabricInfo_v2_t *info) {
    if (info->version != NVML_STRUCT_VERSION(nvmlGpuFabricInfo_v2_t, 2))
        return ARGUMENT_VERSION_MISMATCH;
    nvmlGpuFabricInfo_v2_t out;
    memset(&out, PADDING, sizeof(out));
    int rc = fabric_now(d, &out.state, &out.status);
    if (rc != OK) return rc;
    out.version = info->version;
    memset(out.clusterUuid, 0, sizeof(out.clusterUuid));
    out.cliqueId = 0;
    out.healthMask = 0;
    memcpy(info, &out, sizeof(out));
    return OK;
}
#endif

/* ---- health: ECC, row remapping, clock event reasons ---- */

nvmlReturn_t nvmlDeviceGetTotalEccErrors(device *d, int errorType, int counterType,
                                         unsigned long long *count) {
    CHECK(d);
    static const char *names[2][2] = {{"corrected_volatile", "corrected_aggregate"},
                                      {"uncorrected_volatile", "uncorrected_aggregate"}};
    if (errorType < 0 || errorType > 1 || counterType < 0 || counterType > 1)
        return INVALID_ARGUMENT;
    json *ecc = get(d->spec, "ecc");
    if (!ecc) return NOT_SUPPORTED;
    *count = (unsigned long long)num(ecc, names[errorType][counterType], 0);
    return OK;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(device *d, unsigned int *corrRows, unsigned int *uncRows,
                                       unsigned int *isPending, unsigned int *failureOccurred) {
    CHECK(d);
    json *rows = get(d->spec, "remapped_rows");
    if (!rows || d->parent) return NOT_SUPPORTED;
    *corrRows = (unsigned int)num(rows, "correctable", 0);
    *uncRows = (unsigned int)num(rows, "uncorrectable", 0);
    *isPending = (unsigned int)num(rows, "pending", 0);
    *failureOccurred = (unsigned int)num(rows, "failure", 0);
    return OK;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(device *d, unsigned long long *reasons) {
    CHECK(d);
    *reasons = (unsigned long long)num(d->spec, "clock_reasons", 0);
    return OK;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(device *d, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(d, reasons);
}

/* ---- events ---- */

#define DEFAULT_EVENT_TYPES 0x1fULL /* SBE | DBE | PState | XID | Clock */

typedef struct {
    device *device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

typedef struct event_set {
    unsigned long long registered[64]; /* event types per GPU */
    int delivered;                     /* events of the queue already seen by this set */
} event_set;

static nvmlEventData_t queue[256];
static int queued;
static long consumed; /* bytes of the trigger file already read */

/* Read the lines appended to the trigger file since the last call. */
static void refresh(void) {
    const char *path = getenv("NVML_STUB_EVENTS");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return;
    char line[512];
    fseek(f, consumed, SEEK_SET);
    while (fgets(line, sizeof(line), f)) {
        if (!strchr(line, '\n')) break; /* a line still being written: next time */
        consumed += (long)strlen(line);
        p = line;
        json *j = parse_value();
        int g = (int)num(j, "gpu", 0);
        if (g < 0 || g >= device_count() || g >= 64) continue;
        if (num(j, "lost", 0)) lost[g] = 1;
        if (get(j, "type") && queued < 256) {
            nvmlEventData_t *e = &queue[queued++];
            memset(e, 0, sizeof(*e));
            e->device = &gpus[g];
            e->eventType = (unsigned long long)num(j, "type", 0);
            e->eventData = (unsigned long long)num(j, "data", 0);
            e->gpuInstanceId = e->computeInstanceId = 0xFFFFFFFF; /* not attributable */
        }
    }
    fclose(f);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(device *d, unsigned long long *types) {
    CHECK(d);
    *types = (unsigned long long)num(d->spec, "event_types", (long long)DEFAULT_EVENT_TYPES);
    return OK;
}

nvmlReturn_t nvmlEventSetCreate(event_set **set) {
    if (!initialized) return UNINITIALIZED;
    if (!set) return INVALID_ARGUMENT;
    *set = calloc(1, sizeof(event_set));
    refresh();
    (*set)->delivered = queued; /* a new set sees only events from now on */
    return OK;
}

nvmlReturn_t nvmlDeviceRegisterEvents(device *d, unsigned long long types, event_set *set) {
    CHECK(d);
    if (!set || d->parent) return INVALID_ARGUMENT;
    unsigned long long supported;
    nvmlDeviceGetSupportedEventTypes(d, &supported);
    if (types & ~supported) return NOT_SUPPORTED;
    set->registered[d - gpus] |= types;
    return OK;
}

static int next_event(event_set *set, nvmlEventData_t *data) {
    refresh();
    while (set->delivered < queued) {
        nvmlEventData_t *e = &queue[set->delivered++];
        if (set->registered[e->device - gpus] & e->eventType) {
            *data = *e;
            return 1;
        }
    }
    return 0;
}

nvmlReturn_t nvmlEventSetWait_v2(event_set *set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!initialized) return UNINITIALIZED;
    if (!set || !data) return INVALID_ARGUMENT;
    struct timespec step = {0, 10 * 1000 * 1000};
    for (unsigned int waited = 0;; waited += 10) {
        if (next_event(set, data)) return OK;
        if (any_lost()) return GPU_IS_LOST; /* nvml.h: "if a GPU has fallen off the bus" */
        if (waited >= timeoutms) return TIMEOUT;
        nanosleep(&step, NULL);
    }
}

nvmlReturn_t nvmlEventSetFree(event_set *set) {
    if (!initialized) return UNINITIALIZED;
    free(set);
    return OK;
}
