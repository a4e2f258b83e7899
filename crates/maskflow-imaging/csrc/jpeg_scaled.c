/* Scaled JPEG decoding through the system libjpeg-turbo (libjpeg API), for maskflow-imaging's
 * `decode_reduced`. libjpeg reports fatal errors by calling error_exit, which must not return:
 * every entry point below sets a jump target first, so an error anywhere becomes a non-zero return
 * code with libjpeg's message, never an abort. Warnings (corrupt-but-decodable data) are counted
 * and turned into an error after decoding, so the caller falls back to its strict decoder.
 *
 * Life of a handle: mf_jpeg_open (reads the header, keeps the EXIF APP1 segment) →
 * mf_jpeg_scale (chooses 1/denom, returns the output size) → mf_jpeg_decode (into a buffer the
 * caller owns) → mf_jpeg_close. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

struct mf_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

struct mf_jpeg {
    struct jpeg_decompress_struct cinfo;
    struct mf_error err;
    int started;
};

static void mf_error_exit(j_common_ptr cinfo) {
    struct mf_error *err = (struct mf_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void mf_output_message(j_common_ptr cinfo) {
    /* Nothing is printed: the caller reports. Keep the last message for it. */
    struct mf_error *err = (struct mf_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
}

static void copy_message(const struct mf_jpeg *h, char *msg, size_t msg_len) {
    if (msg && msg_len) {
        strncpy(msg, h->err.message, msg_len - 1);
        msg[msg_len - 1] = 0;
    }
}

static int read_header(struct mf_jpeg *h, const uint8_t *data, size_t len) {
    if (setjmp(h->err.jump)) return 1;
    jpeg_create_decompress(&h->cinfo);
    jpeg_mem_src(&h->cinfo, data, (unsigned long)len);
    jpeg_save_markers(&h->cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&h->cinfo, TRUE);
    return 0;
}

/* Returns a handle with the header read, or NULL with the reason in msg. */
struct mf_jpeg *mf_jpeg_open(const uint8_t *data, size_t len, char *msg, size_t msg_len) {
    struct mf_jpeg *h = (struct mf_jpeg *)calloc(1, sizeof(struct mf_jpeg));
    if (!h) {
        if (msg && msg_len) snprintf(msg, msg_len, "out of memory");
        return NULL;
    }
    h->cinfo.err = jpeg_std_error(&h->err.pub);
    h->err.pub.error_exit = mf_error_exit;
    h->err.pub.output_message = mf_output_message;
    if (read_header(h, data, len)) {
        copy_message(h, msg, msg_len);
        jpeg_destroy_decompress(&h->cinfo);
        free(h);
        return NULL;
    }
    return h;
}

/* Header facts: stored dimensions, the JPEG colour space (libjpeg's J_COLOR_SPACE value), and the
 * EXIF payload (after "Exif\0\0"), if any; the pointer lives as long as the handle. */
void mf_jpeg_info(const struct mf_jpeg *h, uint32_t *width, uint32_t *height, int *color_space,
                  const uint8_t **exif, size_t *exif_len) {
    jpeg_saved_marker_ptr m;
    *width = h->cinfo.image_width;
    *height = h->cinfo.image_height;
    *color_space = (int)h->cinfo.jpeg_color_space;
    *exif = NULL;
    *exif_len = 0;
    for (m = h->cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            *exif = m->data + 6;
            *exif_len = m->data_length - 6;
            break;
        }
    }
}

/* Chooses output scale 1/denom (denom 1, 2, 4 or 8) and an RGB or grayscale output; gives the
 * output size. Returns 0, or non-zero with the reason (CMYK/YCCK sources are refused: code 2). */
int mf_jpeg_scale(struct mf_jpeg *h, unsigned denom, uint32_t *out_width, uint32_t *out_height,
                  int *out_channels, char *msg, size_t msg_len) {
    if (setjmp(h->err.jump)) {
        copy_message(h, msg, msg_len);
        return 1;
    }
    switch (h->cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
        h->cinfo.out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        h->cinfo.out_color_space = JCS_RGB;
        break;
    default:
        if (msg && msg_len) snprintf(msg, msg_len, "colour space %d not handled here", (int)h->cinfo.jpeg_color_space);
        return 2;
    }
    h->cinfo.scale_num = 1;
    h->cinfo.scale_denom = denom;
    h->cinfo.dct_method = JDCT_ISLOW;
    jpeg_calc_output_dimensions(&h->cinfo);
    *out_width = h->cinfo.output_width;
    *out_height = h->cinfo.output_height;
    *out_channels = h->cinfo.out_color_components;
    return 0;
}

/* Decodes into out (out_len must be width × height × channels from mf_jpeg_scale). Returns 0; 1 on
 * a fatal error; 3 when libjpeg warned (corrupt data it papered over); message in msg. */
int mf_jpeg_decode(struct mf_jpeg *h, uint8_t *out, size_t out_len, char *msg, size_t msg_len) {
    size_t stride;
    if (setjmp(h->err.jump)) {
        copy_message(h, msg, msg_len);
        return 1;
    }
    jpeg_start_decompress(&h->cinfo);
    h->started = 1;
    stride = (size_t)h->cinfo.output_width * (size_t)h->cinfo.output_components;
    if (stride * (size_t)h->cinfo.output_height != out_len) {
        if (msg && msg_len) snprintf(msg, msg_len, "output buffer has the wrong size");
        return 1;
    }
    while (h->cinfo.output_scanline < h->cinfo.output_height) {
        JSAMPROW row = out + (size_t)h->cinfo.output_scanline * stride;
        if (jpeg_read_scanlines(&h->cinfo, &row, 1) != 1) {
            /* Cannot happen with an in-memory source (it never suspends); never loop on it. */
            if (msg && msg_len) snprintf(msg, msg_len, "decoder returned no row");
            return 1;
        }
    }
    jpeg_finish_decompress(&h->cinfo);
    h->started = 0;
    if (h->err.pub.num_warnings > 0) {
        copy_message(h, msg, msg_len);
        return 3;
    }
    return 0;
}

void mf_jpeg_close(struct mf_jpeg *h) {
    if (!h) return;
    if (h->started && !setjmp(h->err.jump)) jpeg_abort_decompress(&h->cinfo);
    jpeg_destroy_decompress(&h->cinfo);
    free(h);
}
