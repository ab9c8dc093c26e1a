#ifndef P11KMS_VERSION_H
#define P11KMS_VERSION_H
#define P11KMS_VERSION	"0.1.0"
#endif
